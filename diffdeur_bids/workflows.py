"""Nipype workflows: one branch per scan (or group of stacks), grouped per subject, under one top-level workflow.

    diffdeur_<major>_<minor>_wf
      sub_<label>_wf                 crash files -> <out>/sub-<label>/log/<run_uuid>/
        <scan>_wf: reorient (RAS+) -> enhance -> ds_enhanced (derivatives sink)
                                        enhance -> synthseg -> ds_synthseg       (with --synthseg)
        <group>_wf: reorient_<stack> (each) -> merge -> enhance (fuse) -> ds_enhanced (image, transforms)
                                        enhance -> synthseg -> ds_synthseg       (with --synthseg)

The top-level name carries the app's minor version so a new release never reuses stale work.
A rerun with the same work dir skips nodes whose inputs did not change (Nipype's hashing).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

os.environ["NIPYPE_NO_ET"] = "1"

from nipype.pipeline import engine as pe  # noqa: E402

from . import __version__  # noqa: E402
from .bids import naming  # noqa: E402
from .bids.stacks import StackGroup  # noqa: E402
from .config import Config, Resolved, utc_now  # noqa: E402
from .interfaces import (DerivativesSink, EnhanceImage, EnhanceStacks, Reorient, SegmentationSink,  # noqa: E402
                         StacksSink, SynthSeg)
from .resources import estimate_synthseg_mem_gb  # noqa: E402


def workflow_name() -> str:
    major, minor = (__version__.split(".") + ["0"])[:2]
    return f"diffdeur_{major}_{minor}_wf"


def init_diffdeur_wf(config: Config, resolved: Resolved, scans) -> pe.Workflow:
    """The whole run; ``resolved`` gives the device, the weights and each scan's memory plan."""
    wf = pe.Workflow(name=workflow_name(), base_dir=str(config.work_dir))
    by_subject = defaultdict(list)
    for scan in scans:
        by_subject[scan.subject].append(scan)
    for subject, subject_scans in sorted(by_subject.items()):
        wf.add_nodes([init_subject_wf(config, resolved, subject, subject_scans)])
    return wf


def synthseg_targets(config: Config, scans) -> set[str]:
    """Relpaths of the scans to segment: one per segmentation name (T1w first), none without --synthseg."""
    if not config.synthseg:
        return set()
    return set(naming.synthseg_sources(scan.relpath for scan in scans).values())


def init_subject_wf(config: Config, resolved: Resolved, subject: str, scans) -> pe.Workflow:
    wf = pe.Workflow(name=f"sub_{subject}_wf")
    targets = synthseg_targets(config, scans)
    for scan in scans:
        init = init_stacks_wf if isinstance(scan, StackGroup) else init_scan_wf
        wf.add_nodes([init(config, resolved, scan, synthseg=str(scan.relpath) in targets)])
    crash_dir = str(naming.subject_log_dir(config.output_dir, subject, config.run_uuid))
    for node in wf._get_all_nodes():
        node.config = node.config or {}
        node.config.setdefault("execution", {})["crashdump_dir"] = crash_dir
    return wf


def _settings_for_hash(config: Config) -> dict:
    """The method's settings minus device and threads, which must not invalidate cached work."""
    settings = config.enhance_settings().as_dict()
    settings.pop("device", None)
    settings.pop("threads", None)
    return settings


def app_provenance(config: Config) -> dict:
    return {"Version": config.version, "RunUUID": config.run_uuid, "CommandLine": config.command_line,
            "Date": utc_now()}


def init_scan_wf(config: Config, resolved: Resolved, scan, synthseg: bool | None = None) -> pe.Workflow:
    """One scan's branch; ``synthseg`` (default: ``config.synthseg``) adds the segmentation nodes."""
    wf = pe.Workflow(name=f"{naming.node_name(scan.relpath)}_wf")
    # Nodes run in the main process take no worker slot (n_procs=0): a scan's derivatives are written as
    # soon as it is enhanced, not after the scans queued behind it, so an interrupted run keeps them.
    reorient = pe.Node(Reorient(in_file=str(scan.path)), name="reorient", run_without_submitting=True, n_procs=0)
    planned = resolved.memory_plan[str(scan.relpath)]  # the plan's output grid and memory for this scan
    output_shape = tuple(planned["output_shape"])
    enhance = _enhance_node(EnhanceImage, config, resolved, planned["mem_gb"], label=scan.relpath.name)
    sink = pe.Node(
        DerivativesSink(output_dir=str(config.output_dir), source_relpath=str(scan.relpath),
                        source_metadata=dict(scan.metadata), input_zooms=list(scan.zooms),
                        app=app_provenance(config), fmriprep_compat=config.fmriprep_compat),
        name="ds_enhanced",
        run_without_submitting=True,
        n_procs=0,
    )
    wf.connect([
        (reorient, enhance, [("out_file", "in_file")]),
        (enhance, sink, [("out_file", "in_file"), ("std_file", "std_file"), ("info_file", "info_file")]),
    ])
    if config.synthseg if synthseg is None else synthseg:
        seg, ds_seg = _synthseg_nodes(config, resolved, scan, output_shape)
        wf.connect([
            (enhance, seg, [("out_file", "in_file")]),
            (seg, ds_seg, [("out_file", "in_file"), ("volumes_file", "volumes_file"), ("info_file", "info_file")]),
        ])
    return wf


def _enhance_node(interface, config: Config, resolved: Resolved, mem_gb: float, **inputs) -> pe.Node:
    device = resolved.device
    return pe.Node(
        interface(settings=_settings_for_hash(config), prior=resolved.prior,
                  weights_sha256=resolved.weights_sha256 or "", device=device,
                  threads=config.omp_nthreads, use_gpu=device.startswith("cuda"),
                  progress_bar=config.verbose >= 1, **inputs),
        name="enhance",
        n_procs=config.omp_nthreads,
        mem_gb=mem_gb,
    )


def init_stacks_wf(config: Config, resolved: Resolved, group: StackGroup, synthseg: bool | None = None) -> pe.Workflow:
    """A group's branch: every stack reoriented, all fused in one node (each enhanced alone when they cannot be
    aligned), the derivatives written by one sink; ``synthseg`` segments the fused image (or the reference's)."""
    from nipype.interfaces.utility import Merge

    wf = pe.Workflow(name=f"{naming.node_name(group.relpath)}_wf")
    merge = pe.Node(Merge(len(group.stacks)), name="merge", run_without_submitting=True, n_procs=0)
    for i, stack in enumerate(group.stacks, start=1):
        reorient = pe.Node(Reorient(in_file=str(stack.path)), name=f"reorient_{group.label(stack)}",
                           run_without_submitting=True, n_procs=0)
        wf.connect(reorient, "out_file", merge, f"in{i}")
    planned = resolved.memory_plan[str(group.relpath)]
    enhance = _enhance_node(EnhanceStacks, config, resolved, planned["mem_gb"],
                            labels=[s.relpath.name for s in group.stacks])
    sink = pe.Node(
        StacksSink(output_dir=str(config.output_dir), group_relpath=str(group.relpath),
                   source_relpaths=[str(s) for s in group.sources],
                   source_metadata=[dict(s.metadata) for s in group.stacks], shared_metadata=group.metadata,
                   input_zooms=[list(s.zooms) for s in group.stacks], app=app_provenance(config),
                   fmriprep_compat=config.fmriprep_compat),
        name="ds_enhanced",
        run_without_submitting=True,
        n_procs=0,
    )
    wf.connect([
        (merge, enhance, [("out", "in_files")]),
        (enhance, sink, [("fused", "fused"), ("reason", "reason"), ("out_files", "out_files"),
                         ("std_files", "std_files"), ("info_files", "info_files")]),
    ])
    if config.synthseg if synthseg is None else synthseg:
        seg, ds_seg = _synthseg_nodes(config, resolved, group, tuple(planned["output_shape"]))
        wf.connect([
            (enhance, seg, [("out_file", "in_file")]),
            (enhance, ds_seg, [(("fused", _segmented_source, [str(s) for s in group.sources], str(group.relpath)),
                                "source_relpath")]),
            (seg, ds_seg, [("out_file", "in_file"), ("volumes_file", "volumes_file"), ("info_file", "info_file")]),
        ])
    return wf


def _segmented_source(fused, sources, group_relpath):
    """The name the segmentation is made from: the group's when fused, else the reference stack's."""
    return group_relpath if fused else sources[0]


def _synthseg_nodes(config: Config, resolved: Resolved, scan, output_shape):
    """SynthSeg on the enhanced image, then its sink; backend and weights were checked at start-up."""
    backend = resolved.synthseg_backend or "torch"
    weights = resolved.synthseg_weights
    device = resolved.device
    uses_gpu = device.startswith("cuda")
    weights_bytes = Path(weights).stat().st_size if weights and Path(weights).is_file() else None
    seg = pe.Node(
        SynthSeg(backend=backend, model_file=str(weights or ""), model_sha256=resolved.synthseg_weights_sha256 or "",
                 official_file=resolved.synthseg_official_file or "", robust=config.synthseg_robust,
                 parc=config.synthseg_parc, device=device, threads=config.omp_nthreads, use_gpu=uses_gpu),
        name="synthseg",
        n_procs=config.omp_nthreads,
        mem_gb=estimate_synthseg_mem_gb(output_shape, config.synthseg_robust, weights_bytes, backend),
    )
    ds_seg = pe.Node(
        SegmentationSink(output_dir=str(config.output_dir), source_relpath=str(scan.relpath),
                         app=app_provenance(config)),
        name="ds_synthseg",
        run_without_submitting=True,
        n_procs=0,
    )
    return seg, ds_seg
