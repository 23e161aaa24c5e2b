"""Write the small support/query folders that the README's `attnmeta predict` example labels.

Five characters of one Omniglot evaluation alphabet (Brenden Lake's Omniglot, MIT licence): two drawings
of each as the support set (one subfolder per character, named by the label), and one more drawing of
each, renamed so that the file name does not give the answer away, as the query folder.

    python docs/assets/make_glyphs.py ../shared/data/omniglot
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "glyphs"
ALPHABET = "Tengwar"
CHARACTERS = ("character01", "character02", "character03", "character04", "character05")


def main(root: str) -> None:
    archive = zipfile.ZipFile(Path(root) / "images_evaluation.zip")
    names = sorted(n for n in archive.namelist() if n.endswith(".png"))
    for index, character in enumerate(CHARACTERS):
        files = [n for n in names if n.split("/")[1:3] == [ALPHABET, character]]
        label = f"{ALPHABET.lower()}-{index + 1}"
        for k, name in enumerate(files[:2]):
            target = OUT / "support" / label / f"{k + 1}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
        query = OUT / "query" / f"q{(index * 3) % len(CHARACTERS) + 1}.png"  # shuffled names
        query.parent.mkdir(parents=True, exist_ok=True)
        query.write_bytes(archive.read(files[2]))
        print(f"{query.name} is {label}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/omniglot")
