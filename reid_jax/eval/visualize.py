"""Pictures of an evaluation, as PIL images / PNG files (numpy + Pillow only, no JAX):

* `rank_grid`: for chosen queries, the query image and its top-k gallery images in ranking order,
  bordered GREEN (true match), RED (wrong id) or GREY with a cross (junk: the query's id AND
  camera, dropped by the Market-1501 protocol);
* `random_queries` / `hardest_queries`: which queries to show;
* `cmc_curve`: CMC(k) against rank k;
* `metric_curves`: one plot per metric of a run's `metrics.jsonl`, against the training step.

Both plots come from `line_plot`, a small PIL.ImageDraw line plot. Sizes are (height, width) in
pixels throughout, as image arrays are; colours are RGB tuples.
"""

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MATCH = (0, 160, 0)
WRONG = (220, 0, 0)
JUNK = (128, 128, 128)
QUERY = (0, 90, 220)
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (235, 235, 235)
TEXT = (0, 0, 0)
LINE = (31, 119, 180)
GRID = (225, 225, 225)

# Rank grid layout, in pixels: each cell is a label strip of LABEL_HEIGHT above the image, which
# has a BORDER wide coloured frame; cells are GAP apart, the query column QUERY_GAP further from
# the gallery columns, and the whole grid has a MARGIN around it.
BORDER = 4
LABEL_HEIGHT = 26
GAP = 4
QUERY_GAP = 12
MARGIN = 8

PathLike = str | bytes | os.PathLike


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def random_queries(num_queries: int, count: int, seed: int = 0) -> np.ndarray:
    """`min(count, num_queries)` distinct query indices drawn uniformly with `seed`, ascending.

    Returns [count] int64; the same arguments give the same indices.
    """
    if count < 0 or num_queries < 0:
        raise ValueError(f"count {count} and num_queries {num_queries} must be >= 0")
    chosen = np.random.default_rng(seed).choice(num_queries, min(count, num_queries),
                                                replace=False)
    return np.sort(chosen).astype(np.int64)


def hardest_queries(ap: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` queries with the lowest average precision, lowest first.

    ap: [Q] float AP per query (e.g. `evaluate_rankings(...)["all_AP"]`); NaN marks a skipped
    query (no true match in another camera) and is never chosen. Ties keep query order.
    Returns [min(count, valid queries)] int64.
    """
    if count < 0:
        raise ValueError(f"count {count} must be >= 0")
    ap = np.asarray(ap, np.float64)
    valid = np.flatnonzero(~np.isnan(ap))
    return valid[np.argsort(ap[valid], kind="stable")][:count].astype(np.int64)


def cell_box(row: int, column: int, cell_size: tuple[int, int] = (128, 64)
             ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of the image of a `rank_grid` cell, inside its
    border (right / bottom exclusive). Column 0 is the query, columns 1.. its ranking."""
    height, width = cell_size
    left = MARGIN + BORDER + column * (width + 2 * BORDER + GAP) + (QUERY_GAP if column else 0)
    top = MARGIN + LABEL_HEIGHT + BORDER + row * (LABEL_HEIGHT + height + 2 * BORDER + GAP)
    return left, top, left + width, top + height


def _load_cell(path: PathLike, cell_size: tuple[int, int]) -> Image.Image:
    """The image at `path` resized to cell_size, or a PLACEHOLDER cell reading "no image"
    when it cannot be opened (missing, unreadable or not an image)."""
    height, width = cell_size
    try:
        with Image.open(os.fsdecode(path)) as image:
            return image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except OSError:  # FileNotFoundError, PIL.UnidentifiedImageError, ...
        cell = Image.new("RGB", (width, height), PLACEHOLDER)
        ImageDraw.Draw(cell).text((width / 2, height / 2), "no image", fill=TEXT, font=_font(),
                                  anchor="mm")
        return cell


def _ranked_row(order: np.ndarray, query_pid: int, query_camid: int, gallery_pids: np.ndarray,
                gallery_camids: np.ndarray, top_k: int, show_junk: bool
                ) -> list[tuple[int, int | None]]:
    """(gallery index, protocol rank 1.. or None for junk) of the cells after a query."""
    cells, rank = [], 0
    for index in order:
        if rank == top_k:
            break
        junk = gallery_pids[index] == query_pid and gallery_camids[index] == query_camid
        if not junk:
            rank += 1
            cells.append((int(index), rank))
        elif show_junk:
            cells.append((int(index), None))
    return cells


def rank_grid(query_paths: Sequence[PathLike], query_pids: np.ndarray,
              query_camids: np.ndarray, gallery_paths: Sequence[PathLike],
              gallery_pids: np.ndarray, gallery_camids: np.ndarray, distmat: np.ndarray,
              queries: Sequence[int], top_k: int = 10, cell_size: tuple[int, int] = (128, 64),
              *, show_junk: bool = True, path: PathLike | None = None) -> Image.Image:
    """One row per query: the query image, then its top-k gallery images, best first.

    Args:
      query_paths, gallery_paths: [Q], [G] image files (str, bytes or paths, e.g. the
        `query_paths` / `gallery_paths` of a features .npz). A file that cannot be opened
        (missing, say, after the data moved) is drawn as a light grey "no image" placeholder
        with its usual border and label; it never raises.
      query_pids, query_camids, gallery_pids, gallery_camids: [Q], [Q], [G], [G] int ids.
      distmat: [Q, G] float distances, smaller = more similar. A row is ranked by a stable
        argsort, so ties keep gallery order (as `evaluate_rankings` counts ranks).
      queries: indices of the queries to show, one row each in this order (see
        `random_queries`, `hardest_queries`).
      top_k: valid gallery entries shown per query (fewer if the gallery runs out).
      cell_size: (height, width) in pixels of every image, without its border.
      show_junk: junk entries (the query's id AND camera, which the Market-1501 protocol drops)
        are drawn where they rank, before the k-th valid entry, with a JUNK border, a JUNK
        diagonal cross over the image and the label "junk"; they take no rank number and do
        not count towards top_k, so such a row is longer. False leaves them out.
      path: also write the picture there as a PNG.

    Cells: a label strip (LABEL_HEIGHT px: "query <index>" or "#<rank>" / "junk", then
    "id <pid> c<camid>") above the image in a BORDER px frame: QUERY blue for the query, MATCH
    green for a true match (same id, other camera), WRONG red for another id (distractors, id 0,
    included). `cell_box` gives each image's position. The picture is as wide as its longest
    row; shorter rows leave background.

    Returns an RGB image of height 2 MARGIN + R (LABEL_HEIGHT + H + 2 BORDER) + (R - 1) GAP and
    width 2 MARGIN + C (W + 2 BORDER) + (C - 1) GAP + QUERY_GAP, for R queries and C columns
    (the query and the longest ranking).
    """
    distmat = np.asarray(distmat)
    query_pids, query_camids, gallery_pids, gallery_camids = (
        np.asarray(a).astype(np.int64) for a in (query_pids, query_camids, gallery_pids,
                                                 gallery_camids))
    num_queries, num_gallery = len(query_pids), len(gallery_pids)
    if distmat.shape != (num_queries, num_gallery):
        raise ValueError(f"distmat shape {distmat.shape} does not match {num_queries} queries x "
                         f"{num_gallery} gallery ids")
    if {len(query_paths), len(query_camids)} != {num_queries} or {
            len(gallery_paths), len(gallery_camids)} != {num_gallery}:
        raise ValueError("paths, person ids and camera ids differ in length")
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError("no queries to show")
    if not all(0 <= q < num_queries for q in queries):
        raise ValueError(f"query indices must lie in [0, {num_queries}): {queries}")
    if top_k < 1:
        raise ValueError(f"top_k {top_k} must be >= 1")

    rows = [_ranked_row(np.argsort(distmat[q], kind="stable"), query_pids[q], query_camids[q],
                        gallery_pids, gallery_camids, top_k, show_junk) for q in queries]
    columns = 1 + max(len(row) for row in rows)
    _, _, right, bottom = cell_box(len(rows) - 1, columns - 1, cell_size)
    grid = Image.new("RGB", (right + BORDER + MARGIN, bottom + BORDER + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    cache: dict[str, Image.Image] = {}

    def draw_cell(row: int, column: int, image_path: PathLike, colour: tuple[int, int, int],
                  labels: tuple[str, str], junk: bool = False) -> None:
        left, top, right, bottom = cell_box(row, column, cell_size)
        key = os.fsdecode(image_path)
        if key not in cache:
            cache[key] = _load_cell(image_path, cell_size)
        grid.paste(cache[key], (left, top))
        draw.rectangle((left - BORDER, top - BORDER, right + BORDER - 1, bottom + BORDER - 1),
                       outline=colour, width=BORDER)
        if junk:
            draw.line((left, top, right - 1, bottom - 1), fill=JUNK, width=2)
            draw.line((left, bottom - 1, right - 1, top), fill=JUNK, width=2)
        centre = (left + right) / 2
        label_top = top - BORDER - LABEL_HEIGHT
        for line, text in enumerate(labels):
            draw.text((centre, label_top + 1 + 12 * line), text, fill=TEXT, font=_font(),
                      anchor="ma")

    for row, (q, cells) in enumerate(zip(queries, rows, strict=True)):
        draw_cell(row, 0, query_paths[q], QUERY,
                  (f"query {q}", f"id {query_pids[q]} c{query_camids[q]}"))
        for column, (g, rank) in enumerate(cells, start=1):
            ids = f"id {gallery_pids[g]} c{gallery_camids[g]}"
            if rank is None:
                draw_cell(row, column, gallery_paths[g], JUNK, ("junk", ids), junk=True)
            else:
                colour = (MATCH if gallery_pids[g] == query_pids[q]
                          and gallery_camids[g] != query_camids[q] else WRONG)
                draw_cell(row, column, gallery_paths[g], colour, (f"#{rank}", ids))
    if path is not None:
        grid.save(os.fsdecode(path), format="PNG")
    return grid


def _nice_ticks(low: float, high: float, target: int = 6) -> tuple[float, float, list[float], int]:
    """Axis range widened to multiples of a 1 / 2 / 5 x 10^n step giving about `target`
    intervals. Returns (low, high, ticks, decimals needed to print a tick)."""
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    ticks = [round(k * step, decimals) for k in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks, decimals


def line_plot(xs: Sequence[float], ys: Sequence[float], *, title: str = "", x_label: str = "",
              y_label: str = "", size: tuple[int, int] = (360, 560),
              y_range: tuple[float, float] | None = None,
              x_ticks: Sequence[float] | None = None, log_y: bool = False) -> Image.Image:
    """A line through the points (xs[i], ys[i]) (in the given order) in LINE colour, 2 px wide,
    over a framed plot area with GRID lines at the ticks and the labels around it.

    The x axis spans exactly the data (ticks at 1 / 2 / 5 x 10^n steps inside it, or
    `x_ticks`); the y axis spans `y_range` (default: the data), widened to whole ticks. log_y:
    y on a log10 scale with a tick per decade (needs every y > 0; `y_range` then in log10
    units). A single point is drawn as a
    dot. size: (height, width) of the picture in pixels. Returns an RGB image.
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or not len(xs):
        raise ValueError(f"need as many x as y values, at least one: {xs.shape}, {ys.shape}")
    if log_y and not (ys > 0).all():
        raise ValueError("log_y needs every y > 0")
    height, width = size
    font = _font()
    plot_ys = np.log10(ys) if log_y else ys
    y_low, y_high = y_range if y_range is not None else (plot_ys.min(), plot_ys.max())
    if log_y:
        y_low, y_high = math.floor(y_low), math.ceil(y_high)
        y_high = max(y_high, y_low + 1)
        y_ticks = [float(k) for k in range(y_low, y_high + 1)]
        y_texts = [f"1e{k:d}" for k in range(y_low, y_high + 1)]
    else:
        y_low, y_high, y_ticks, decimals = _nice_ticks(y_low, y_high)
        y_texts = [f"{t:.{decimals}f}" for t in y_ticks]
    x_low, x_high = float(xs.min()), float(xs.max())
    if x_ticks is None:
        widened_low, widened_high, x_ticks, decimals = _nice_ticks(x_low, x_high)
        if x_low == x_high:
            x_low, x_high = widened_low, widened_high
        x_ticks = [t for t in x_ticks if x_low <= t <= x_high]
        x_texts = [f"{t:.{decimals}f}" for t in x_ticks]
    else:
        x_texts = [f"{t:g}" for t in x_ticks]
        if x_low == x_high:
            x_low, x_high = x_low - 0.5, x_high + 0.5

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    label_width = max(draw.textlength(text, font=font) for text in y_texts)
    left = int(14 + 6 + label_width + 6)
    top, right, bottom = 28, width - 16, height - 40
    if right - left < 10 or bottom - top < 10:
        raise ValueError(f"plot size {size} leaves no room for the plot area")

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    for tick, text in zip(y_ticks, y_texts, strict=True):
        _, y = to_pixel(x_low, tick)
        draw.line((left, y, right, y), fill=GRID)
        draw.line((left - 4, y, left, y), fill=TEXT)
        draw.text((left - 6, y), text, fill=TEXT, font=font, anchor="rm")
    for tick, text in zip(x_ticks, x_texts, strict=True):
        x, _ = to_pixel(tick, y_low)
        draw.line((x, top, x, bottom), fill=GRID)
        draw.line((x, bottom, x, bottom + 4), fill=TEXT)
        draw.text((x, bottom + 6), text, fill=TEXT, font=font, anchor="ma")
    draw.rectangle((left, top, right, bottom), outline=TEXT)
    points = [to_pixel(x, y) for x, y in zip(xs, plot_ys, strict=True)]
    if len(points) == 1:
        (x, y), = points
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=LINE)
    else:
        draw.line(points, fill=LINE, width=2, joint="curve")
    draw.text(((left + right) / 2, 8), title, fill=TEXT, font=font, anchor="ma")
    draw.text(((left + right) / 2, height - 6), x_label, fill=TEXT, font=font, anchor="md")
    if y_label:
        strip = Image.new("RGB", (int(draw.textlength(y_label, font=font)) + 2, 14), BACKGROUND)
        ImageDraw.Draw(strip).text((1, 1), y_label, fill=TEXT, font=font)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (2, int((top + bottom - strip.height) / 2)))
    return image


def cmc_curve(cmc: Sequence[float], map_score: float | None = None, *,
              title: str = "CMC", size: tuple[int, int] = (360, 560),
              path: PathLike | None = None) -> Image.Image:
    """CMC(k) in % against rank k = 1..R, titled with rank-1 (cmc[0]) and mAP if given.

    cmc: [R] float in [0, 1], cmc[k - 1] the rank-k matching rate (`evaluate_rankings`'s
    "cmc"). map_score: mAP in [0, 1]. The y axis runs from about the lowest rate to 100 %.
    size: (height, width) in pixels. path: also write the picture there as a PNG.
    """
    rates = 100.0 * np.asarray(cmc, np.float64)
    ranks = np.arange(1, len(rates) + 1)
    if not len(rates):
        raise ValueError("empty CMC")
    heading = f"{title}: rank-1 = {rates[0]:.1f}%"
    if map_score is not None:
        heading += f", mAP = {100.0 * map_score:.1f}%"
    _, _, ticks, _ = _nice_ticks(1, len(rates))
    x_ticks = sorted({1, *(int(t) for t in ticks if 1 <= t <= len(rates))})
    image = line_plot(ranks, rates, title=heading, x_label="rank k",
                      y_label="matching rate (%)", size=size,
                      y_range=(float(rates.min()), 100.0), x_ticks=x_ticks)
    if path is not None:
        image.save(os.fsdecode(path), format="PNG")
    return image


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def metric_curves(metrics_jsonl_path: PathLike, out_dir: PathLike,
                  size: tuple[int, int] = (360, 560)) -> list[Path]:
    """One PNG per metric of a run's metrics.jsonl, plotted against the step.

    Each line of the file is `{"step": int, "epoch": int, "<name>": float, ...}`; a metric may
    be on some lines only (e.g. `eval/mAP`). Non-finite values are left out (a metric with
    none gets no file). A metric's file is `out_dir/<name>.png` with each run of characters
    other than letters, digits, `.`, `_`, `-` replaced by `_` (`train/loss` ->
    `train_loss.png`; `_2`, `_3`.. appended if two names collide). Learning rates (names whose
    last `/`, `_` or `.` separated part is `lr` or `learning_rate`, all values > 0) get a log
    y axis. size: (height, width) in pixels. Returns the written paths, by metric name.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    for line in Path(os.fsdecode(metrics_jsonl_path)).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for name, value in record.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if name not in ("step", "epoch") and numeric and math.isfinite(value):
                series.setdefault(name, []).append((float(record["step"]), float(value)))
    out_dir = Path(os.fsdecode(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    written, stems = [], set()
    for name in sorted(series):
        steps, values = np.asarray(sorted(series[name], key=lambda p: p[0])).T
        stem, count = _file_stem(name), 1
        while stem in stems:
            count += 1
            stem = f"{_file_stem(name)}_{count}"
        stems.add(stem)
        log_y = bool(re.search(r"(^|[/_.])(lr|learning_rate)$", name)) and (values > 0).all()
        title = f"{name}: last = {values[-1]:.4g} at step {steps[-1]:g}"
        image = line_plot(steps, values, title=title, x_label="step", y_label=name, size=size,
                          log_y=log_y)
        written.append(out_dir / f"{stem}.png")
        image.save(written[-1], format="PNG")
    return written
