"""How every root script ends on one of the project's own errors: ONE line on stderr, exit status 2.

    if __name__ == "__main__":
        raise SystemExit(run_script(main))

The project's errors already say what is wrong and where (file, line, field or option): ``DataError`` (a data set
or builder input), ``PredictionsError`` (a predictions file), ``CatalogError`` (a catalog), ``CheckpointError`` (a
checkpoint or model folder that must not be loaded), ``PromptFitError`` (prompts that cannot fit),
``WarmstartGateError`` (DeepRec's warm-start gate under ``--warmstart_gate require``), ``OptionError`` (a
command-line / --config option), and a missing, misplaced or unreadable path (FileNotFoundError,
FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError). ``run_script`` prints
``error: <message> (<what to do>)`` for them and returns 2, like the builders (python -m preprocess.*) and
argparse. Any other exception is a bug and keeps its traceback. ``RECRL_DEBUG=1`` prints the traceback of the project's errors too (same exit status).
"""
from __future__ import annotations

import os
import sys
import traceback

DEBUG_ENV = "RECRL_DEBUG"
EXIT_STATUS = 2


def _project_errors() -> list[tuple[type, str]]:
    """(error class, what to do) in match order."""
    from evaluation.predictions import PredictionsError
    from modeling.checkpoint_integrity import CheckpointError
    from preprocess.contract import DataError
    from preprocess.prompting import PromptFitError
    from rewards.catalog import CatalogError
    from cli.args import OptionError
    from methods.deeprec.warmstart import WarmstartGateError

    return [
        (OptionError, "see --help for the allowed values"),
        (CheckpointError, "re-copy or re-save that checkpoint, or pass another one"),
        (PredictionsError, "fix or regenerate the predictions file"),
        (CatalogError, "fix the catalog file, or pass the data set's own catalog"),
        (PromptFitError, "raise the length limit or shorten the prompts"),
        (WarmstartGateError, "the warm-start model is not ready for RL"),
        (DataError, "fix that file, or rebuild the data set with python -m preprocess.*"),
        (FileNotFoundError, "check the path"),
        (FileExistsError, "check the path"),
        (NotADirectoryError, "check the path"),
        (IsADirectoryError, "check the path"),
        (PermissionError, "check the path's permissions"),
    ]


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_line(err: BaseException, hint: str = "") -> str:
    """The one line printed for a project error (newlines in the message folded into '; ')."""
    message = "; ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__
    return f"error: {message}" + (f" ({hint})" if hint else "")


def run_script(main, argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; 0 when it returns, 2 after one ``error:`` line on stderr for a project error (see the
    module docstring). Other exceptions propagate with their traceback."""
    try:
        main(argv)
    except Exception as err:  # noqa: BLE001 -- sorted below: the project's own errors, or re-raised
        for cls, hint in _project_errors():
            if isinstance(err, cls):
                break
        else:
            raise
        sys.stdout.flush()
        if debug_enabled():
            traceback.print_exc()
        else:
            hint += f"; {DEBUG_ENV}=1 shows the traceback"
        print(error_line(err, hint), file=sys.stderr, flush=True)
        return EXIT_STATUS
    return 0
