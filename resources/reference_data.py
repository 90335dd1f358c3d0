"""Published reference files (descriptor banks, text banks, concept set): downloaded once, sha256-checked.

On a user's machine a file is fetched from its public source at a pinned commit into
`<artifacts>/reference/`; a folder the user gives (`local_dir`, e.g. a checkout's `../shared/data`) is
used first. Every file is verified against its sha256 before use, wherever it came from.
"""

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from cliplab.mutual.descriptors import DescriptorBank, descriptor_bank

_MENON = "https://raw.githubusercontent.com/sachit-menon/classify_by_description_release/d1a3d89/descriptors/"
_SPAN = "https://raw.githubusercontent.com/yossigandelsman/clip_text_span/49f70f3/text_descriptions/"
_DISSECT = "https://raw.githubusercontent.com/Trustworthy-ML-Lab/CLIP-dissect/21e7697/data/"

# name → (relative path in a local data folder, source URL, sha256)
REFERENCE_FILES: dict[str, tuple[str, str, str]] = {
    **{f"descriptors_{d}": (f"descriptors/descriptors_{d}.json", f"{_MENON}descriptors_{d}.json", sha) for d, sha in {
        "imagenet": "0c478db8b74046ca185488f252c908420bcea585198c7bceb4e42386cc1f7d3a",
        "places365": "967bcd3166018f6b6b94f99e7dd9889bfa38386035010f10abe2936fd44aff9f",
        "food101": "b7393ceb850bd4f0d4a06ef3a30bb81cb41fd3a43e2a0adccf9e95a903a65d91",
        "cub": "983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597",
        "pets": "3e9b003047b66210920c699678a84f481e4f2a196e40020b0cd0dd595bc441c4",
        "dtd": "3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4",
        "eurosat": "1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867",
    }.items()},
    "image_descriptions_general": ("text-banks/image_descriptions_general.txt", f"{_SPAN}image_descriptions_general.txt",
                                   "39c6bf3e788684d9e0e8afa902c13aae1ee8eafefdbab94ba923fd05b9038630"),
    "google_3498_english": ("text-banks/google_3498_english.txt", f"{_SPAN}google_3498_english.txt",
                            "d9502487f471d07e44b8ae79e01fd03527ab032be2c7d721c1346f97efdaf2c5"),
    "concepts_20k": ("concept-sets/20k.txt", f"{_DISSECT}20k.txt",
                     "4ed6e5336d7760d281f7e72df31827da880c861363e820d8c65666b0f10d9ac0"),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ReferenceData(ConfigurableResource):
    """`cache_dir`: where downloads go; `local_dir`: a folder laid out like shared/data, used first."""

    cache_dir: str = "./artifacts/reference"
    local_dir: str = ""
    timeout_s: float = 30.0

    def path(self, name: str) -> Path:
        if name not in REFERENCE_FILES:
            raise CliplabError(f"unknown reference file {name!r}; known: {', '.join(sorted(REFERENCE_FILES))}")
        rel, url, sha = REFERENCE_FILES[name]
        for folder in filter(None, (self.local_dir, self.cache_dir)):
            candidate = Path(folder) / rel
            if candidate.is_file():
                got = sha256_of(candidate)
                if got != sha:
                    raise CliplabError(f"reference file {candidate} has sha256 {got}, expected {sha}: replace it")
                return candidate
        return self._download(rel, url, sha)

    def _download(self, rel: str, url: str, sha: str) -> Path:
        target = Path(self.cache_dir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
            got = sha256_of(Path(tmp))
            if got != sha:
                raise CliplabError(f"download of {url} has sha256 {got}, expected {sha}; not used")
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError) as e:
            raise CliplabError(
                f"cannot download {url} ({getattr(e, 'reason', e)}): put the file at {target} "
                f"(sha256 {sha}) or set CLIPLAB_REFERENCE_DIR to a folder that has {rel}"
            ) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def descriptor_bank(self, dataset: str) -> DescriptorBank:
        """D of a published descriptor file (`imagenet`, `places365`, `food101`, `cub`, `pets`, `dtd`, `eurosat`)."""
        with open(self.path(f"descriptors_{dataset}"), encoding="utf-8") as f:
            per_class = json.load(f)
        return descriptor_bank(per_class, underscores_are_spaces=dataset == "places365")

    def lines(self, name: str) -> list[str]:
        """A text bank or concept set: its non-empty lines, in order."""
        with open(self.path(name), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
