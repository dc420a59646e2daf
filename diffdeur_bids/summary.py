"""The end of a run: which scans were done, skipped or failed (and why), as users read it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .bids import naming
from .bids.stacks import StackGroup
from .config import Config


@dataclass
class Outcome:
    done: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    crash_files: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _reused(config: Config, scan, started: float) -> bool:
    """Whether the scan's enhancement comes from an earlier run (its result in the work dir is older than this run)."""
    from .workflows import workflow_name

    result = (config.work_dir / workflow_name() / f"sub_{scan.subject}_wf" / f"{naming.node_name(scan.relpath)}_wf"
              / "enhance" / "result_enhance.pklz")
    return result.exists() and result.stat().st_mtime < started


def _crash_reasons(crash_files) -> dict:
    """Map each crashed branch (``<scan>_wf``) to the last line of its traceback: the error itself."""
    reasons = {}
    for path in crash_files:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), "")
        branch = node.split(".")[-2] if node.count(".") >= 1 else node  # top.sub_wf.<scan>_wf.node
        last = lines[-1] if lines else "see the crash file"
        reasons[branch] = re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", last)  # drop the module path of the exception
    return reasons


def collect_outcome(config: Config, discovery, started: float, interrupted: bool = False) -> Outcome:
    """A scan is done when its derivatives (enhanced image, and segmentation with ``--synthseg``) were
    (re)written by this run: the sinks write the image last."""
    out = Outcome(skipped=[f"{s.relpath}: {s.reason}" for s in discovery.skipped if not s.error])
    out.failed = [f"{s.relpath}: {s.reason}" for s in discovery.skipped if s.error]
    for subject in sorted({s.subject for s in discovery.scans}):
        folder = naming.subject_log_dir(config.output_dir, subject, config.run_uuid)
        out.crash_files += sorted(str(p) for p in folder.glob("crash-*.txt"))
    reasons = _crash_reasons(out.crash_files)
    segmented = set(naming.synthseg_sources(s.relpath for s in discovery.scans).values()) if config.synthseg else set()

    def fresh(relpaths) -> bool:
        return all((dest := config.output_dir / r).exists() and dest.stat().st_mtime >= started - 1 for r in relpaths)

    for scan in discovery.scans:
        name = unit_name(scan)
        seg = str(scan.relpath) in segmented
        dests = [naming.enhanced_relpath(scan.relpath)] + ([naming.synthseg_relpath(scan.relpath)] if seg else [])
        how = f" (fused from {len(scan.stacks)} stacks)" if isinstance(scan, StackGroup) else ""
        if isinstance(scan, StackGroup) and not fresh(dests):  # not fused: every stack enhanced on its own
            dests = [naming.enhanced_relpath(s) for s in scan.sources]
            dests += [naming.synthseg_relpath(scan.sources[0])] if seg else []
            how = " (NOT fused: the stacks could not be aligned, each was enhanced on its own; their sidecars' " \
                  "StackFusion says why)"
        if fresh(dests):
            reused = " (enhanced by an earlier run, reused from the work dir)" if _reused(config, scan, started) else ""
            out.done.append(f"{name}{how}{reused}")
        else:
            stopped = "interrupted before it finished; a rerun with the same work dir does it" if interrupted \
                else "not run (stopped early, see the log)"
            why = reasons.get(f"{naming.node_name(scan.relpath)}_wf", stopped)
            out.failed.append(f"{name}: {why}")
    return out


def unit_name(unit) -> str:
    """A scan's relpath, or a group's stacks joined by ' + ': how the summary and the reports name it."""
    return str(unit) if isinstance(unit, StackGroup) else str(unit.relpath)


def format_summary(outcome: Outcome, elapsed_s: float, output_dir) -> str:
    lines = [f"Summary: {len(outcome.done)} done, {len(outcome.skipped)} skipped, "
             f"{len(outcome.failed)} failed in {elapsed_s:.0f} s; outputs in {output_dir}"]
    lines += [f"  done     {r}" for r in outcome.done]
    lines += [f"  skipped  {r}" for r in outcome.skipped]
    lines += [f"  FAILED   {r}" for r in outcome.failed]
    if outcome.crash_files:
        lines.append("Crash reports (text):")
        lines += [f"  {c}" for c in outcome.crash_files]
    return "\n".join(lines)
