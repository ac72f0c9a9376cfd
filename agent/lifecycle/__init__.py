"""The task lifecycle, one module per step, in the order a task goes through them:

    accept      validate, precheck, give ids, persist the records (creates nothing)
    host        the task's directory, volumes and cgroup
    network     the netns and the CNI attachment (agent.network.TaskNetwork)
    secrets     secrets and environment files resolved into each container's environment
    images      every image present and unpacked (agent.pull)
    containers  snapshot, container, task create and start, in dependsOn order
    running     exits (event stream and Wait), health checks, essential-exit decisions
    teardown    stop signals by the stored plan, and the one removal function per resource
                kind that stop, rollback, recovery and `nstask gc` all use
    recovery    what a restarted agent finishes or rolls back

`start` runs the sequence; `runtime` holds what the agent keeps about a live task (one
TaskRuntime per task, dropped when it is STOPPED) and the shared context; `seams` has the
small interfaces each step needs of containerd and the network, so tests can give fakes.
"""
