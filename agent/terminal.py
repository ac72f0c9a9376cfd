"""`pseudoTerminal` and `interactive` of a container definition, for its main process, as
Docker honours `docker run -t` / `-i` (which is what ECS passes them to).

- pseudoTerminal: the process runs in a pty (OCI process.terminal, Tasks.Create terminal).
  containerd's shim copies the pty's output to the task's stdout, the logging shim: one
  stream (stdout), as Docker logs a tty container. Nothing goes to stderr.
- interactive: Docker keeps the process's stdin open, so `sh` or `cat` as the command keeps
  running instead of exiting at once on an empty stdin. With pseudoTerminal, stdin is the
  pty, open for as long as the task runs (reads wait, never see EOF): `interactive` plus
  `pseudoTerminal`, the common pair (`docker run -dit ... sh`), behaves as Docker's.
  Without a terminal, containerd's binary logging (how every container's output reaches
  the logging shim) gives the process no stdin at all (its binaryIO has none): stdin is
  /dev/null, as without `interactive`; taskdef warns about it.
"""

from __future__ import annotations

from agent.spec import Spec, SpecOpt


def with_terminal(terminal: bool) -> SpecOpt:
    """process.terminal for pseudoTerminal (runc then makes the process a session leader
    with the pty as its controlling terminal)."""

    def opt(spec: Spec) -> None:
        if terminal:
            spec["process"]["terminal"] = True

    return opt
