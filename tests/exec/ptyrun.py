#!/usr/bin/env python3
"""Run a command in a new pseudo-terminal, as a person at a terminal would.

    ptyrun.py COLS ROWS [--then COLS ROWS]... -- COMMAND [ARG...]

The terminal has COLS x ROWS from the start; each SIGUSR1 this process gets resizes it to
the next --then size, as a person resizing the window would (the command's foreground
process group gets SIGWINCH). What this process reads on stdin is typed into the terminal
(so a 0x03 byte is Ctrl-C, delivered by the terminal as SIGINT); what the terminal shows is
written to this process's stdout. Exits with the command's status (128 + N when a signal N
ended it). The root tests drive `aws ecs execute-command` with the session-manager-plugin,
and `ecsd exec`, through it.
"""
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios


def winsize(cols, rows):
    return struct.pack("HHHH", rows, cols, 0, 0)


def main():
    args = sys.argv[1:]
    try:
        split = args.index("--")
    except ValueError:
        split = -1
    head, argv = args[:split], args[split + 1:]
    if split < 2 or not argv or len(head) % 3 != 2:
        sys.stderr.write(__doc__)
        return 2
    try:
        cols, rows = int(head[0]), int(head[1])
        later = []
        for i in range(2, len(head), 3):
            if head[i] != "--then":
                raise ValueError(head[i])
            later.append((int(head[i + 1]), int(head[i + 2])))
    except ValueError:
        sys.stderr.write(__doc__)
        return 2
    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, winsize(cols, rows))
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    def resize(_signum, _frame):
        if later:
            fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(*later.pop(0)))

    signal.signal(signal.SIGUSR1, resize)
    stdin_open = True
    while True:
        watched = [master] + ([0] if stdin_open else [])
        ready, _, _ = select.select(watched, [], [])
        if 0 in ready:
            data = os.read(0, 4096)
            if data:
                os.write(master, data)
            else:
                stdin_open = False
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data:
                break
            os.write(1, data)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
