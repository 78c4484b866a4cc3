"""The way every entry point ends: bad input in one line and exit code 2, a signal or an error with its own code, and
the process group torn down once (the flags themselves are in flags.py)."""
import signal
import sys
import traceback

from utils import InputError, RunError
from utils.dist import teardown


class Terminated(BaseException):
    """SIGTERM before a script installs its own handler (the training loop saves its state on one)."""


def _terminated(signum, frame):
    raise Terminated()


def run_main(main, parser, check_args):
    """Parse, check (check_args(parser, args) -> args: flags.check_args for the scripts) and run; bad input ends with
    one line on stderr and exit code 2, never a traceback. Every way out (finished, an error, SIGTERM, Ctrl-C, a bug)
    goes through utils.dist.teardown once main's frames are gone, so under torchrun each rank exits with the run's own
    code."""
    args = check_args(parser, parser.parse_args())
    signal.signal(signal.SIGTERM, _terminated)
    code, message = 0, None
    try:
        main(args)
    except InputError as e:
        code, message = 2, str(e)
    except RunError as e:
        code, message = e.exit_code, str(e)
    except (KeyboardInterrupt, Terminated) as e:
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        code, message = 128 + signum, f"stopped by {signal.Signals(signum).name}"
    except BaseException:  # a bug: its traceback, then the same way out (exit code 1)
        traceback.print_exc()
        code = 1
    teardown()  # here, not in the handlers above: their tracebacks hold main's frames, and with them the wrappers
    if message is not None:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
    sys.exit(code)
