"""The binary logging shim containerd starts for each container.

Kept import-free: containerd waits on the shim's readiness byte before a task is created.
"""
