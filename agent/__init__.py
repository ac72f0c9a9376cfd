"""The nstask agent: task model, lifecycle engine, containerd client, netns, state, API."""
