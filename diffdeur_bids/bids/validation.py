"""Run bids-validator-deno on the input dataset and explain its errors in a few readable lines.

The deno validator (not the Python ``bids-validator``, which only checks names) bundles the BIDS
schema and runs offline; its cache goes to a temporary folder unless ``DENO_DIR`` is set. When it
is not installed the run goes on with a warning: validation is helpful, not mandatory, for a BIDS App.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from ..errors import ValidationFailedError

log = logging.getLogger("diffdeur")


def find_validator() -> str | None:
    """The validator beside this Python (a venv not on PATH) or on PATH."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return str(beside) if beside.is_file() else shutil.which("bids-validator-deno")


def run_validator(dataset: Path, extra_args=()) -> tuple[int, dict]:
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError("bids-validator-deno is not installed (pip install 'diffdeur[validate]')")
    with tempfile.TemporaryDirectory(prefix="diffdeur-deno-") as deno_dir:
        # deno caches compiled code in ~/.cache/deno: keep it in a temporary folder (HOME may be read-only)
        env = {"DENO_DIR": deno_dir, **os.environ}
        proc = subprocess.run([exe, str(dataset), "--format", "json", *extra_args],
                              capture_output=True, text=True, timeout=600, env=env)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"issues": {"issues": [{"code": "VALIDATOR_FAILED", "severity": "error",
                                         "location": "", "issueMessage": (proc.stderr or proc.stdout)[-2000:]}]}}
    return proc.returncode, report


def errors_of(report: dict) -> list[dict]:
    return [i for i in report.get("issues", {}).get("issues", []) if i.get("severity") == "error"]


def summarise(report: dict, limit: int = 5) -> str:
    """One line per error code with its message and a few of the files it was found in."""
    by_code = defaultdict(list)
    for issue in errors_of(report):
        by_code[issue.get("code", "?")].append(issue)
    messages = report.get("issues", {}).get("codeMessages", {})
    lines = []
    for code, issues in by_code.items():
        where = ", ".join(sorted({i.get("location", "") for i in issues})[:limit])
        more = f" (+{len(issues) - limit} more)" if len(issues) > limit else ""
        msg = (messages.get(code) or issues[0].get("issueMessage") or "").strip().splitlines()
        sub = f" [{issues[0]['subCode']}]" if issues[0].get("subCode") else ""
        lines.append(f"  {code}{sub}: {msg[0] if msg else ''}\n    in {where}{more}")
    return "\n".join(lines)


def validate_input(bids_dir: Path) -> bool:
    """True when the input passed; False when it could not be checked; raise when it has errors."""
    try:
        code, report = run_validator(bids_dir)
    except FileNotFoundError as e:
        log.warning("Skipping BIDS validation: %s", e)
        return False
    except subprocess.TimeoutExpired:
        log.warning("Skipping BIDS validation: bids-validator-deno did not finish in 10 minutes")
        return False
    if errors_of(report):
        raise ValidationFailedError(
            f"bids-validator-deno found errors in {bids_dir}:\n{summarise(report)}\n"
            "Fix them, or pass --skip-bids-validation to run anyway.")
    if code != 0:
        log.warning("bids-validator-deno exited %d without listing errors; going on", code)
        return False
    return True
