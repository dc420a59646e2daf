"""Build-time only: bake the official SynthSeg weights into the image, verified by sha256.

Called by the Dockerfile and Singularity.def when SYNTHSEG_WEIGHTS_URL is set; does nothing
otherwise. A wrong hash fails the build. The app itself never downloads anything.
"""

import hashlib
import sys
import urllib.request
from pathlib import Path


def main(url: str, sha256: str, dest: str) -> int:
    if not url:
        print("SynthSeg weights not baked in (SYNTHSEG_WEIGHTS_URL is empty); --synthseg then needs --synthseg-model")
        return 0
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as resp, open(path, "wb") as out:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        path.unlink()
        print(f"SynthSeg weights from {url} have sha256 {digest.hexdigest()}, expected {sha256}", file=sys.stderr)
        return 1
    path.chmod(0o644)
    print(f"baked {path} (sha256 {sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
