"""Rank grids, CMC and metric curves (reid_jax.eval.visualize): layout, colours, file names."""

import json

import numpy as np
import pytest
from PIL import Image

from reid_jax.eval import visualize as viz

CELL = (128, 64)  # (height, width)
TILE_HEIGHT, TILE_WIDTH = CELL[0] + 2 * viz.BORDER, CELL[1] + 2 * viz.BORDER

# Gallery: for query 0 (id 1, camera 1) entry 0 is junk, 1 a distractor, 2 and 4 true matches.
GALLERY_PIDS = np.array([1, 0, 1, 2, 1, 3])
GALLERY_CAMS = np.array([1, 2, 2, 1, 3, 2])
QUERY_PIDS = np.array([1, 2])
QUERY_CAMS = np.array([1, 2])
# Row 0 ties entries 2 and 3: the stable order keeps 2 first. Row 1: 3, 4, 5, then the rest.
DISTMAT = np.array([[0.1, 0.2, 0.3, 0.3, 0.5, 0.6],
                    [0.9, 0.8, 0.7, 0.1, 0.2, 0.3]], np.float32)
GALLERY_COLOURS = [(40 * i + 20, 200 - 30 * i, 90) for i in range(6)]
QUERY_COLOURS = [(250, 200, 60), (60, 200, 250)]


@pytest.fixture
def images(tmp_path):
    """Flat-colour query and gallery images written to tmp_path: (query paths, gallery paths)."""
    def write(name, colour):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (32, 64), colour).save(path)
        return str(path)
    return ([write(f"q{i}", c) for i, c in enumerate(QUERY_COLOURS)],
            [write(f"g{i}", c) for i, c in enumerate(GALLERY_COLOURS)])


def grid_size(rows, columns):
    """(width, height) of a rank grid, from the layout documented in rank_grid."""
    width = (2 * viz.MARGIN + columns * TILE_WIDTH + (columns - 1) * viz.GAP + viz.QUERY_GAP)
    height = 2 * viz.MARGIN + rows * (viz.LABEL_HEIGHT + TILE_HEIGHT) + (rows - 1) * viz.GAP
    return width, height


def border_colours(pixels, row, column):
    """The colours at the middle of the four border sides of a cell."""
    left, top, right, bottom = viz.cell_box(row, column, CELL)
    middle_x, middle_y, half = (left + right) // 2, (top + bottom) // 2, viz.BORDER // 2
    return {tuple(pixels[y, x]) for x, y in ((left - half, middle_y), (right + half - 1, middle_y),
                                            (middle_x, top - half), (middle_x, bottom + half - 1))}


def image_colour(pixels, row, column):
    """A pixel of a cell's image away from the label, the centre and the junk cross."""
    left, top, right, bottom = viz.cell_box(row, column, CELL)
    return tuple(pixels[top + (bottom - top) // 8, (left + right) // 2])


def make_grid(query_paths, gallery_paths, **kwargs):
    return viz.rank_grid(query_paths, QUERY_PIDS, QUERY_CAMS, gallery_paths, GALLERY_PIDS,
                         GALLERY_CAMS, DISTMAT, [0, 1], top_k=3, cell_size=CELL, **kwargs)


def test_rank_grid_layout_colours_and_order(images, tmp_path):
    query_paths, gallery_paths = images
    out = tmp_path / "grid.png"
    grid = make_grid(query_paths, gallery_paths, path=out)
    # Row 0: junk 0 (extra, not counted), then #1 distractor 1, #2 match 2, #3 wrong id 3.
    # Row 1 (id 2, camera 2): #1 match 3 (camera 1), #2 wrong 4, #3 wrong 5.
    assert grid.size == grid_size(rows=2, columns=5)
    with Image.open(out) as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
    pixels = np.asarray(grid)
    expected = [[(0, viz.JUNK), (1, viz.WRONG), (2, viz.MATCH), (3, viz.WRONG)],
                [(3, viz.MATCH), (4, viz.WRONG), (5, viz.WRONG)]]
    for row, cells in enumerate(expected):
        assert border_colours(pixels, row, 0) == {viz.QUERY}
        assert image_colour(pixels, row, 0) == QUERY_COLOURS[row]
        for column, (gallery, colour) in enumerate(cells, start=1):
            assert border_colours(pixels, row, column) == {colour}, (row, column)
            assert image_colour(pixels, row, column) == GALLERY_COLOURS[gallery], (row, column)
    assert len({viz.QUERY, viz.MATCH, viz.WRONG, viz.JUNK}) == 4
    # The junk cell is crossed out through its centre; a ranked cell is not.
    for column, crossed in ((1, True), (2, False)):
        left, top, right, bottom = viz.cell_box(0, column, CELL)
        centre = pixels[(top + bottom) // 2 - 1:(top + bottom) // 2 + 2,
                        (left + right) // 2 - 1:(left + right) // 2 + 2].reshape(-1, 3)
        assert (centre == viz.JUNK).all(axis=1).any() == crossed
    # Right of row 1's last cell (a shorter row) is background.
    left, top, _, bottom = viz.cell_box(1, 4, CELL)
    assert (pixels[top:bottom, left:left + CELL[1]] == viz.BACKGROUND).all()


def test_rank_grid_without_junk(images):
    grid = make_grid(*images, show_junk=False)
    assert grid.size == grid_size(rows=2, columns=4)
    pixels = np.asarray(grid)
    for column, (gallery, colour) in enumerate([(1, viz.WRONG), (2, viz.MATCH), (3, viz.WRONG)],
                                               start=1):
        assert border_colours(pixels, 0, column) == {colour}
        assert image_colour(pixels, 0, column) == GALLERY_COLOURS[gallery]


def test_rank_grid_missing_or_broken_image_is_a_placeholder(images, tmp_path):
    query_paths, gallery_paths = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    gallery_paths = list(gallery_paths)
    gallery_paths[2] = str(tmp_path / "moved" / "g2.png")
    gallery_paths[1] = broken
    query_paths = [query_paths[0].encode(), query_paths[1]]  # bytes, as some .npz hold them
    pixels = np.asarray(make_grid(query_paths, gallery_paths))
    assert image_colour(pixels, 0, 0) == QUERY_COLOURS[0]
    for column, colour in ((2, viz.WRONG), (3, viz.MATCH)):
        assert image_colour(pixels, 0, column) == viz.PLACEHOLDER
        assert border_colours(pixels, 0, column) == {colour}


def test_rank_grid_rejects_bad_inputs(images):
    query_paths, gallery_paths = images
    for distmat, queries, message in ((DISTMAT[:, :5], [0], "distmat shape"),
                                      (DISTMAT, [2], "query indices"),
                                      (DISTMAT, [], "no queries")):
        with pytest.raises(ValueError, match=message):
            viz.rank_grid(query_paths, QUERY_PIDS, QUERY_CAMS, gallery_paths, GALLERY_PIDS,
                          GALLERY_CAMS, distmat, queries)


def test_hardest_queries_lowest_ap_first_without_nan():
    ap = np.array([0.5, np.nan, 0.1, 0.5, 0.9, np.nan])
    np.testing.assert_array_equal(viz.hardest_queries(ap, 3), [2, 0, 3])
    np.testing.assert_array_equal(viz.hardest_queries(ap, 10), [2, 0, 3, 4])
    assert viz.hardest_queries(ap, 0).size == 0
    assert viz.hardest_queries(ap, 2).dtype == np.int64


def test_random_queries_deterministic_distinct_in_range():
    first = viz.random_queries(100, 8, seed=3)
    np.testing.assert_array_equal(first, viz.random_queries(100, 8, seed=3))
    assert len(set(first.tolist())) == 8 and first.min() >= 0 and first.max() < 100
    assert (np.diff(first) > 0).all()
    assert not np.array_equal(first, viz.random_queries(100, 8, seed=4))
    np.testing.assert_array_equal(viz.random_queries(5, 10, seed=0), np.arange(5))


def line_tops(image):
    """For each pixel column holding the plot line, the topmost line pixel's row."""
    line = (np.asarray(image) == viz.LINE).all(axis=2)
    columns = np.flatnonzero(line.any(axis=0))
    return columns, line[:, columns].argmax(axis=0)


def test_cmc_curve_rises(tmp_path):
    cmc = np.minimum(0.6 + 0.03 * np.arange(20), 1.0)
    out = tmp_path / "cmc.png"
    image = viz.cmc_curve(cmc, map_score=0.42, size=(300, 400), path=out)
    assert image.size == (400, 300) and out.is_file()
    columns, tops = line_tops(image)
    assert len(columns) > 200  # spans most of the plot width
    assert (np.diff(tops) <= 0).all()  # image rows grow downwards: the line never descends
    assert tops[0] - tops[-1] > 100
    assert columns.min() > 20 and columns.max() < 400 - 10 and tops.min() > 20


def test_metric_curves_one_png_per_metric(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(0, 200, 10):
        record = {"step": step, "epoch": step // 50, "train/loss": 3.0 / (1 + step),
                  "train/lr": 3.5e-4 * (0.1 if step >= 100 else 1.0)}
        if step % 50 == 0:
            record["eval/mAP"] = 0.2 + step / 1000
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 200, "epoch": 4, "train/loss": float("nan"),
                             "never/finite": float("inf")}))
    path.write_text("\n".join(lines) + "\n\n")
    written = viz.metric_curves(path, tmp_path / "curves", size=(240, 320))
    assert [p.name for p in written] == ["eval_mAP.png", "train_loss.png", "train_lr.png"]
    for png in written:
        assert png.parent == tmp_path / "curves"
        with Image.open(png) as image:
            assert image.size == (320, 240)
            assert len(line_tops(image.convert("RGB"))[0]) > 100
    with Image.open(written[1]) as loss:
        _, tops = line_tops(loss.convert("RGB"))
    assert tops[0] < tops[-1]  # the loss falls


def test_single_point_plot():
    image = viz.line_plot([5], [0.3], title="one", size=(200, 300))
    assert (np.asarray(image) == viz.LINE).all(axis=2).sum() > 10
