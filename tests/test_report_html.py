"""`mncli report --html`: one self-contained page (every section, one image per plot, nothing outside
itself), its numbers equal to the score stage's; folders and grid points collected; bad input; the
label placement and Pareto front the plots share."""

from __future__ import annotations

import base64
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mncli.stages.report_html import SECTIONS

DATA = "synthetic:classes=4,shape=1x12x12,train=128,test=32"
FAST = ["-d", DATA, "--batch-size", "32", "--val-size", "32", "--device", "cpu"]
PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What the tests look at: ids, every src/href, figures and their images, summary cells."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[str] = []
        self.figures: list[dict] = []
        self.cells: dict[str, dict[str, float]] = {}  # the summary's numbers: artifact -> key -> value
        self.text: list[str] = []
        self._figure: dict | None = None
        self._row: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("src", "href", "srcset", "data", "action", "poster"):
            if name in attrs:
                self.refs.append((tag, name, attrs[name]))
        if tag == "figure" and "plot" in (attrs.get("class") or "").split():
            self._figure = {"id": attrs.get("id"), "images": []}
            self.figures.append(self._figure)
        if tag == "img":
            if self._figure is not None:
                self._figure["images"].append(attrs["src"])
        if tag == "tr" and "data-artifact" in attrs:
            self._row = attrs["data-artifact"]
            self.cells[self._row] = {}
        if "data-key" in attrs and self._row is not None:
            self.cells[self._row][attrs["data-key"]] = float(attrs["data-value"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.text.append(data)


def check_self_contained(page: Page) -> None:
    """Every section; one PNG per plot, inline; links only to anchors of the page; no scripts."""
    assert set(SECTIONS) <= set(page.ids)
    assert page.figures and all(len(f["images"]) == 1 for f in page.figures)
    assert page.tags.count("img") == len(page.figures)
    for tag, attribute, value in page.refs:
        if attribute == "href":
            assert value.startswith("#") and value[1:] in page.ids, value
        else:
            assert tag == "img" and value.startswith("data:image/png;base64,"), value[:60]
            assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> list[Path]:
    """train -> prune (AGP) -> ternarize (TTQ) on tiny synthetic data."""
    from mncli.cli.app import main

    folder = tmp_path_factory.mktemp("chain")
    fp, pruned, tern = (folder / f"{n}.safetensors" for n in ("fp", "pruned", "tern"))
    arch = ["--arch", "test-cnn", "--arch-opt", "width=4"]
    assert main(["-q", "train", *arch, *FAST, "--epochs", "2", "-o", str(fp)]) == 0
    agp = [
        "--method",
        "agp",
        "--sparsity",
        "0.5",
        "--epochs",
        "2",
        "--start",
        "0",
        "--end",
        "1",
        "--freq",
        "1",
    ]
    assert main(["-q", "prune", str(fp), *FAST, *agp, "-o", str(pruned)]) == 0
    assert (
        main(["-q", "ternarize", str(pruned), *FAST, "--method", "ttq", "--epochs", "1", "-o", str(tern)])
        == 0
    )
    return [fp, pruned, tern]


@pytest.fixture(scope="module")
def grid(chain, tmp_path_factory) -> Path:
    """An EC2T grid of two points from the pruned artifact, collected, in a folder of its own."""
    from mncli.cli.app import main

    out = tmp_path_factory.mktemp("grid") / "grid.safetensors"
    ec2t = ["-m", "ec2t", "--grid", "--ini-c", "0.45", "--lambda-div", "0.0,0.3", "--retrain-epochs", "0"]
    assert main(["-q", "ternarize", str(chain[1]), *FAST, "--epochs", "1", *ec2t, "-o", str(out)]) == 0
    return out.parent


def test_the_chain_page_is_self_contained_and_holds_every_section(chain, tmp_path, run_cli):
    out = tmp_path / "report.html"
    run = run_cli("report", chain[-1], "--chain", "--html", out, "--json")
    assert run.code == 0, run.err
    assert run.json["html"] == str(out) and [r["stage"] for r in run.json["rows"]] == [
        "train",
        "prune",
        "ternarize",
    ]
    page = Page(out.read_text(encoding="utf-8"))
    check_self_contained(page)
    plots = {f["id"] for f in page.figures}
    # the pruning schedule from the prune stage, the zero fraction from ternarize's history
    assert {"fig-pareto", "fig-layer-types", "fig-layer-bits", "fig-loss", "fig-accuracy"} <= plots
    assert {"fig-sparsity", "fig-zeros"} <= plots
    assert sum(1 for i in page.ids if i.startswith("stage-")) == 3  # one card per stage
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left


def test_the_page_shows_what_the_score_stage_measures(chain, tmp_path, run_cli):
    from mncli.stages.report import Kind, fmt
    from mncli.stages.score import ScoreConfig
    from mncli.stages.score import run as score

    out = tmp_path / "r.html"
    assert run_cli("report", *chain, "--html", out).code == 0
    page = Page(out.read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert list(page.cells) == [str(p) for p in chain]
    for path in chain:
        measured = score(ScoreConfig(artifact=path))
        cells = page.cells[str(path)]
        assert cells["score"] == measured["score"] and cells["params"] == measured["params"]
        assert cells["ops"] == measured["ops"] and cells["file_bytes"] == path.stat().st_size
        assert fmt(measured["score"], Kind.SCORE) in text and f"{measured['ops']:,.0f}" in text
    assert "measured" in text and "recorded" in text and measured["conventions"]["ternary_storage"] in text


def test_a_grid_folder_and_its_points_are_collected(grid, tmp_path, run_cli):
    points = sorted(grid.glob("grid.point*.safetensors"))
    assert len(points) == 2
    run = run_cli("report", grid, "--json")
    assert run.code == 0, run.err
    assert [Path(r["artifact"]).name for r in run.json["rows"]] == [
        "grid.point0.safetensors",
        "grid.point1.safetensors",
        "grid.safetensors",
    ]
    run = run_cli("report", *points, "--json")
    assert run.code == 0 and len(run.json["rows"]) == 2
    out = tmp_path / "grid.html"
    assert run_cli("report", grid, "--html", out).code == 0
    page = Page(out.read_text(encoding="utf-8"))
    check_self_contained(page)
    text = "".join(page.text)
    assert all(p.name.removesuffix(".safetensors") in text for p in points)
    assert "fig-pareto" in {f["id"] for f in page.figures} and "on the Pareto front" in text


def test_a_folder_skips_what_is_not_an_artifact_and_refuses_when_nothing_is_left(grid, tmp_path, run_cli):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copyfile(grid / "grid.point0.safetensors", folder / "a.safetensors")
    save_file({"w": torch.zeros(2)}, str(folder / "state.safetensors"))
    run = run_cli("report", folder, "--json")
    assert run.code == 0 and len(run.json["rows"]) == 1 and "skipping" in run.err
    (folder / "a.safetensors").unlink()
    run = run_cli("report", folder)
    skipped, error = run.err.strip().splitlines()  # the file skipped, then the one-line error
    assert run.code == 2 and "state.safetensors" in skipped and "no mncli artifacts" in error


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--html", "{input}"], "would overwrite"),
        (["--html", "{folder}"], "is a directory"),
        (["--html", "{file}/r.html"], "is not a directory"),
        (["--html", "{folder}/r.html", "--markdown", "{folder}/r.html"], "--markdown and --html"),
    ],
)
def test_bad_html_outputs_exit_2_with_one_line(chain, tmp_path, run_cli, argv, text):
    (tmp_path / "f").write_text("x")
    paths = {"input": chain[0], "folder": tmp_path, "file": tmp_path / "f"}
    run = run_cli("report", chain[0], *(a.format(**paths) for a in argv))
    assert run.code == 2 and run.out == "" and len(run.err.strip().splitlines()) == 1 and text in run.err, (
        run.err
    )
    assert not (tmp_path / "r.html").exists()


def test_html_without_matplotlib_names_the_extra(chain, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    run = run_cli("report", chain[0], "--html", tmp_path / "r.html")
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1
    assert "pip install 'mncli[plot]'" in run.err and not (tmp_path / "r.html").exists()


def test_pareto_front_keeps_what_nothing_beats():
    from mncli.scaling.plot import pareto_front

    points = [(3.0, 70.0), (1.0, 50.0), (2.0, 40.0), (2.0, 60.0), (4.0, 65.0)]
    assert pareto_front(points) == [1, 3, 0]


def test_labels_of_coinciding_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mncli.scaling.plot import draw_accuracy_score, label_box, place_labels

    points = [{"score": 1e-3, "acc": 60.0, "label": f"point{k}", "group": "g"} for k in range(4)]
    points += [{"score": 1.05e-3, "acc": 60.2, "label": "near", "group": "g"}]
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    draw_accuracy_score(ax, points, target=80.0)
    fig.tight_layout()
    place_labels(ax, [p["score"] for p in points], [p["acc"] for p in points], [p["label"] for p in points])
    renderer = fig.canvas.get_renderer()
    boxes = [label_box(t, renderer) for t in ax.texts]  # the texts, not their leader lines
    frame = ax.get_window_extent(renderer)
    assert len(boxes) == len(points)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    plt.close(fig)


def test_every_group_of_a_picture_has_its_own_colour_and_marker():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mncli.scaling.plot import PALETTE, draw_accuracy_score

    groups = 2 * len(PALETTE) + 1  # past the palette twice
    points = [
        {"score": 1e-3 * (k + 1), "acc": 50.0 + k, "label": "", "group": f"g{k}"} for k in range(groups)
    ]
    fig, ax = plt.subplots()
    draw_accuracy_score(ax, points)
    styles = set()
    for collection in ax.collections:
        if collection.get_label().startswith("g"):
            colour = tuple(collection.get_facecolor()[0])
            path = collection.get_paths()[0]
            codes = b"" if path.codes is None else path.codes.tobytes()
            styles.add((colour, path.vertices.tobytes(), codes))
    plt.close(fig)
    assert len(styles) == groups
