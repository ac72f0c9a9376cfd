"""A CNI runtime library with libcni semantics, plus nstask's built-in in-process plugin."""
