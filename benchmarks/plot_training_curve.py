"""Plot a prior's training loss log (``loss_log.csv`` from ``diffdeur-train-prior``) to a PNG."""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(log_csv: str, out_png: str) -> None:
    rows = list(csv.DictReader(open(log_csv)))
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [float(r["train_loss"]) for r in rows])
    ax1.set(xlabel="step", ylabel="EDM-weighted loss (running mean)", title="training loss", yscale="log")
    for key in [k for k in rows[0] if k.startswith("val_mse_sigma_")]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        ax2.plot(*zip(*pts), label=f"sigma {key.rsplit('_', 1)[1]}")
    ax2.set(xlabel="step", ylabel="denoising MSE", title="validation (held-out volumes)", yscale="log")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
