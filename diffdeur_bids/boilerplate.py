"""The methods text of a run, as fMRIPrep writes its boilerplate: what ran, with which versions, and what to cite.

Written to ``OUTPUT_DIR/logs/CITATION.md``, ``.html`` and ``.bib`` from the run's options and what
they resolved to, before the scans are enhanced (``--boilerplate-only`` stops there). Authors may
paste the text into a manuscript; the references are in the ``.bib`` file under the keys the text
cites.
"""

from __future__ import annotations

import html
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import __version__, atomic
from .config import Config, Resolved
from .priors.registry import SHIPPED, is_shipped

REFERENCES = {
    "diffdeur": """@misc{diffdeur,
  author = {Lin, X. and Du, C. and Wu, Q. and Tian, X. and Yu, J. and Zhang, Y. and Wei, H.},
  title = {{DiffDeuR}: diffusion-model and implicit neural representation based low-field {MRI} enhancement},
  note = {ShanghaiTech University, Shanghai Jiao Tong University}
}""",
    "diffpir": """@inproceedings{diffpir,
  author = {Zhu, Yuanzhi and Zhang, Kai and Liang, Jingyun and Cao, Jiezhang and Wen, Bihan and Timofte, Radu and Van Gool, Luc},
  title = {Denoising Diffusion Models for Plug-and-Play Image Restoration},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year = {2023}
}""",
    "edm": """@inproceedings{edm,
  author = {Karras, Tero and Aittala, Miika and Aila, Timo and Laine, Samuli},
  title = {Elucidating the Design Space of Diffusion-Based Generative Models},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2022}
}""",
    "nipype": """@article{nipype,
  author = {Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and Clark, Dav and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.},
  title = {Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in Python},
  journal = {Frontiers in Neuroinformatics},
  volume = {5},
  pages = {13},
  year = {2011},
  doi = {10.3389/fninf.2011.00013}
}""",
    "pybids": """@article{pybids,
  author = {Yarkoni, Tal and Markiewicz, Christopher J. and de la Vega, Alejandro and Gorgolewski, Krzysztof J. and others},
  title = {{PyBIDS}: Python tools for {BIDS} datasets},
  journal = {Journal of Open Source Software},
  volume = {4},
  number = {40},
  pages = {1294},
  year = {2019},
  doi = {10.21105/joss.01294}
}""",
    "bidsapps": """@article{bidsapps,
  author = {Gorgolewski, Krzysztof J. and Alfaro-Almagro, Fidel and Auer, Tibor and others},
  title = {{BIDS} apps: Improving ease of use, accessibility, and reproducibility of neuroimaging data analysis methods},
  journal = {PLoS Computational Biology},
  volume = {13},
  number = {3},
  pages = {e1005209},
  year = {2017},
  doi = {10.1371/journal.pcbi.1005209}
}""",
    "synthseg": """@article{synthseg,
  author = {Billot, Benjamin and Greve, Douglas N. and Puonti, Oula and Thielscher, Axel and Van Leemput, Koen and Fischl, Bruce and Dalca, Adrian V. and Iglesias, Juan Eugenio},
  title = {{SynthSeg}: Segmentation of brain {MRI} scans of any contrast and resolution without retraining},
  journal = {Medical Image Analysis},
  volume = {86},
  pages = {102789},
  year = {2023},
  doi = {10.1016/j.media.2023.102789}
}""",
    "synthsegrobust": """@article{synthsegrobust,
  author = {Billot, Benjamin and Magdamo, Colin and Cheng, You and Arnold, Steven E. and Das, Sudeshna and Iglesias, Juan Eugenio},
  title = {Robust machine learning segmentation for large-scale analysis of heterogeneous clinical brain {MRI} datasets},
  journal = {Proceedings of the National Academy of Sciences},
  volume = {120},
  number = {9},
  pages = {e2216399120},
  year = {2023},
  doi = {10.1073/pnas.2216399120}
}""",
}


def _version_of(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _prior_sentence(resolved: Resolved) -> str:
    sha = (resolved.weights_sha256 or "unknown")[:12]
    if not is_shipped(resolved.prior):
        return f"a diffusion prior trained by the user (weights file `{Path(resolved.prior).name}`, sha256 {sha}...)"
    meta_file = SHIPPED[resolved.prior].path.parent / "training_metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    trained = (f", trained for {meta['training_steps']:,} steps on 2D slices of {len(meta['training_files'])} "
               "high-field brain volumes (T1w, T2w and FLAIR; public datasets listed in the model card)"
               if meta.get("training_files") and meta.get("training_steps") else "")
    return f"the shipped diffusion prior `{resolved.prior}` (sha256 {sha}...){trained}"


def methods_text(config: Config, resolved: Resolved) -> str:
    """The boilerplate in Markdown, with ``[@key]`` citations of :data:`REFERENCES`."""
    s = config.enhance_settings()
    res = config.output_resolution
    modalities = ", ".join(config.modalities)
    paragraphs = [
        f"Low-field anatomical images were enhanced with *diffdeur* {__version__} [@diffdeur], a BIDS App "
        f"[@bidsapps] built on Nipype {_version_of('nipype')} [@nipype] and PyBIDS {_version_of('pybids')} [@pybids], "
        f"with PyTorch {_version_of('torch')}.",
        f"The {modalities} scans with a magnetic field strength of at most {config.max_field_strength:g} T were "
        "reoriented to RAS+. Each scan's noise level was estimated from the image (from the air around the head "
        "where the magnitude image keeps it, else from its finest wavelet detail), and a scan stored on a finer "
        "matrix than it was acquired on was enhanced on its acquired grid. The enhancement (DiffDeuR) solves the "
        "inverse problem of the scan's degradation (a box slice profile, a Gaussian point-spread "
        "function and Gaussian noise) by half-quadratic splitting: a data-prior step, in which a pre-trained "
        f"diffusion model denoises the current estimate (Tweedie's formula), alternated over {s.steps} noise "
        f"levels of a Karras schedule from {s.sigma_start:g} to {s.sigma_end:g} [@edm; @diffpir] with a "
        "data-fidelity step, in which an implicit neural representation of the volume is fitted to the scan "
        "through the degradation model."
        + (" The sampler started from the prior-denoised scan interpolated, projected onto the data and passed "
           "through a learned two-dimensional upsampler (a residual U-Net trained on high-field volumes to restore "
           "what lies between thick slices; several stacks of one contrast each on its own, then fused through "
           "every stack's degradation); the implicit representation was then fitted as a correction of that "
           "start." if config.learned_upsampling else "")
        + f" The prior was {_prior_sentence(resolved)}. Images were written at "
        f"{res:g} mm isotropic resolution"
        + (f", as the mean of {config.num_samples} posterior samples, with their voxel-wise standard deviation as an "
           "uncertainty map" if config.num_samples > 1 else "")
        + f". The run used the `{config.quality}` preset, random seed {config.random_seed}, on the "
        f"{resolved.device} device.",
    ]
    if config.stacks == "auto":
        paragraphs.append(
            "Where a contrast was acquired as several thick-slice stacks in one session (names differing only in "
            "their acquisition, run or reconstruction label, on different grids), the stacks were fused into one "
            "volume covering the field of view "
            "of the stack with the finest in-plane voxel, the reference: every other stack was rigidly registered "
            "to the reference (normalised cross-correlation, three resolution levels), its six motion parameters "
            "were refined during the fit, and one implicit neural representation was fitted through every stack's "
            "degradation model, weighted by its noise. Stacks that could not be aligned were enhanced one by one.")

    if config.synthseg:
        robust = " (SynthSeg-robust)" if config.synthseg_robust else ""
        backend = "FreeSurfer's mri_synthseg" if resolved.synthseg_backend == "freesurfer" else \
            "diffdeur's PyTorch port of SynthSeg 2.0"
        paragraphs.append(f"The enhanced images were segmented with SynthSeg{robust} [@synthseg; @synthsegrobust] "
                          f"({backend}).")
    paragraphs.append("The text above was generated by diffdeur from the options of the run, so that it can be "
                      "copied into a manuscript unchanged; the references are in `CITATION.bib`.")
    return "# Methods\n\n" + "\n\n".join(paragraphs) + "\n\n## References\n\n" + \
        "\n".join(f"- [@{k}]" for k in cited_keys("\n".join(paragraphs))) + "\n"


def cited_keys(text: str) -> list[str]:
    keys = re.findall(r"@([a-z]+)", text)
    return [k for k in dict.fromkeys(keys) if k in REFERENCES]


def _html(markdown: str) -> str:
    """A minimal self-contained page of the Markdown above (headings, paragraphs, list items, code, emphasis)."""
    body = []
    for block in markdown.strip().split("\n\n"):
        text = html.escape(block)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        text = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
        if text.startswith("## "):
            body.append(f"<h2>{text[3:]}</h2>")
        elif text.startswith("# "):
            body.append(f"<h1>{text[2:]}</h1>")
        elif text.startswith("- "):
            body.append("<ul>" + "".join(f"<li>{line[2:]}</li>" for line in text.splitlines()) + "</ul>")
        else:
            body.append(f"<p>{text}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffdeur: methods</title>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_boilerplate(config: Config, resolved: Resolved) -> Path:
    """Write ``logs/CITATION.md``, ``.html`` and ``.bib`` into the output folder; returns the ``.md``."""
    text = methods_text(config, resolved)
    folder = Path(config.output_dir) / "logs"
    atomic.write_text(folder / "CITATION.bib", "\n\n".join(REFERENCES[k] for k in cited_keys(text)) + "\n")
    atomic.write_text(folder / "CITATION.html", _html(text))
    atomic.write_text(folder / "CITATION.md", text)
    return folder / "CITATION.md"
