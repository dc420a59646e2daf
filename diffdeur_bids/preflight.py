"""Start-up checks: everything that can fail in seconds fails before any scan is enhanced.

Paths, method settings, the device, the SynthSeg backend and its weights, the input's BIDS
validity, and (once the scans are known) the prior's weights. Each check raises a typed error
from :mod:`diffdeur_bids.errors` that the CLI maps to an exit code; what they resolve is
returned as a :class:`~diffdeur_bids.config.Resolved` record.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .bids import discovery as disc
from .bids.validation import validate_input
from .config import Config, Resolved
from .errors import FeatureUnavailableError, OutputError, UsageError

log = logging.getLogger("diffdeur")

PARC_HELP = ("--synthseg-parc needs FreeSurfer's mri_synthseg (FreeSurfer >= 7.3 on the PATH, FREESURFER_HOME "
             "and a licence): the PyTorch port does not implement SynthSeg's cortical parcellation")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _writable(path: Path) -> bool:
    """Whether ``path`` exists and is usable (read, write), or could be created in its nearest existing parent."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.R_OK | os.W_OK | os.X_OK)


def check_paths(config: Config) -> None:
    """Never write into the input dataset; fail before work when outputs cannot be written."""
    bids = config.bids_dir.resolve()
    disc.check_bids_dir(bids)
    out = config.output_dir.resolve()
    work = config.work_dir.resolve()
    in_raw_tree = _inside(out, bids) and not _inside(out, bids / "derivatives")
    if in_raw_tree or out == bids / "derivatives":
        raise OutputError(f"output_dir {out} is inside the input dataset {bids}; use a folder outside it "
                          f"or {bids / 'derivatives' / 'diffdeur'}")
    if _inside(bids, out):
        raise OutputError(f"output_dir {out} contains the input dataset {bids}; choose a separate folder")
    if _inside(work, bids):
        raise OutputError(f"work dir {work} is inside the input dataset {bids}; pass -w with a folder outside it")
    for what, path in (("output_dir", out), ("work dir", work)):
        if not _writable(path):
            raise OutputError(f"{what} {path} cannot be created or written (check permissions; "
                              "in a container, mount it writable)")


def check_settings(config: Config) -> None:
    from .enhance import check_settings as check_method_settings

    try:
        check_method_settings(config.enhance_settings())
    except ValueError as e:
        raise UsageError(f"invalid method settings: {e}") from e


def check_device(config: Config) -> str:
    from .enhance import resolve_device

    device = str(resolve_device(config.device))
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        log.info("Device: %s (%s)", device, name)
    else:
        log.info("Device: cpu (%d thread(s) per scan); GPU and CPU results are not bit-identical", config.omp_nthreads)
    return device


def check_synthseg(config: Config) -> dict:
    """Choose the SynthSeg backend and check its weights now, before any enhancement runs.

    Returns the :class:`Resolved` fields: backend, the weights file (the port's, or the one
    FreeSurfer ships, for the record), its sha256 and which official file it is. No backend, a
    missing, corrupt or wrong weights file, or ``--synthseg-parc`` without FreeSurfer:
    :class:`FeatureUnavailableError` (exit 1) whose message says where to get the weights.
    """
    if not config.synthseg:
        return {}
    from .segment import (SegmentationError, SegmentationUnavailable, choose_backend, default_weights,
                          freesurfer_status, identify_weights)

    if config.synthseg_parc:
        ok, reason = freesurfer_status()
        if not ok or config.synthseg_backend == "torch" or config.synthseg_model is not None:
            raise FeatureUnavailableError(f"{PARC_HELP}; here: {reason if not ok else 'the torch port was asked for'}. "
                                          "Run without --synthseg-parc to use the port.")
    try:
        backend, weights = choose_backend(config.synthseg_model, config.synthseg_robust, config.synthseg_backend)
    except SegmentationError as e:
        env = (" The environment variable DIFFDEUR_SYNTHSEG_MODEL may also name the weights file "
               "(the container images set it).") if isinstance(e, SegmentationUnavailable) else ""
        raise FeatureUnavailableError(f"--synthseg: {e}{env}") from e
    if backend == "freesurfer":
        weights = default_weights(config.synthseg_robust)  # what mri_synthseg will load, for the record only
    found = {"synthseg_backend": backend, "synthseg_weights": Path(weights).absolute() if weights else None}
    if weights:
        sha, official = identify_weights(weights)
        found.update(synthseg_weights_sha256=sha, synthseg_official_file=official)
    kind = "robust 2.0" if config.synthseg_robust else "2.0"
    if backend == "torch":
        log.info("SynthSeg %s: PyTorch port, weights %s (sha256 %s, %s)", kind, found["synthseg_weights"],
                 found.get("synthseg_weights_sha256"), found.get("synthseg_official_file") or "not an official SynthSeg file")
    else:
        log.info("SynthSeg %s: FreeSurfer mri_synthseg%s", kind, " --parc" if config.synthseg_parc else "")
    return found


def check_input_dataset(config: Config) -> None:
    if config.skip_bids_validation:
        log.info("BIDS validation skipped (--skip-bids-validation)")
    elif validate_input(config.bids_dir):
        log.info("BIDS validation passed (bids-validator-deno)")


def check_start(config: Config) -> Resolved:
    """The checks that need no scan, in the order users meet them; what they resolved."""
    check_paths(config)
    check_settings(config)
    device = check_device(config)
    synthseg = check_synthseg(config)
    check_input_dataset(config)
    return Resolved(device=device, prior=config.prior, **synthseg)


def load_weights(config: Config) -> str:
    """Load the prior (and the learned upsampler, when used) once before any work, so a missing or
    corrupt file fails in seconds; the prior's sha256."""
    from .priors import describe, load_prior, load_upsampler

    prior = load_prior(config.prior, device="cpu")
    log.info("Prior: %s (sha256 %s)", describe(config.prior), prior.sha256)
    if config.learned_upsampling:
        upsampler = load_upsampler(device="cpu")
        log.info("Learned upsampler: %s (sha256 %s)", upsampler.name, upsampler.sha256)
    return prior.sha256
