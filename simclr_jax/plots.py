"""Figures of a run as pure functions: arrays or records in, one PNG out (matplotlib, Agg canvas).

Each function takes what it draws and an output path (local, or any `tf.io.gfile` URL such as
gs://...) and returns the path. No pyplot: figures are `matplotlib.figure.Figure` objects on an
Agg canvas, so importing this module never changes a notebook's backend. Pixel sizes are fixed
by the layout (inches x DPI, no tight bounding box):

    augmentation_grid  N columns x 3 rows (original, view 1, view 2) of CELL_INCHES squares
    tsne_scatter       TSNE_INCHES
    training_curves    one PANEL_INCHES panel per metric group, CURVE_COLUMNS panels per row
    stage_bars         BAR_INCHES per stage + BAR_MARGIN_INCHES wide, BAR_HEIGHT_INCHES high
"""

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from simclr_jax import fs

DPI = 100
CELL_INCHES = 1.5
TSNE_INCHES = (7.0, 6.0)
PANEL_INCHES = (4.0, 3.0)
CURVE_COLUMNS = 3
BAR_INCHES = 1.2
BAR_MARGIN_INCHES = 1.8
BAR_HEIGHT_INCHES = 4.0

# Panels of `training_curves`: (title, metrics.jsonl keys drawn in it). A panel appears when at
# least one of its keys was logged; names are those of stages.py and train.py.
CURVE_PANELS = (
  ('loss', ('contrastive_loss', 'supervised_loss', 'distill_loss', 'probe_loss', 'labelled_loss')),
  ('contrastive accuracy', ('contrast_acc',)),
  ('classifier accuracy', ('probe_accuracy', 'train_accuracy', 'teacher_agreement', 'eval_top1')),
  ('kNN top-1', ('knn_top1',)),
  ('learning rate', ('learning_rate',)),
)
# Series with at most this many points get markers, so a single end-of-stage value is visible.
MARKER_MAX_POINTS = 20


def _new_figure(width_inches: float, height_inches: float) -> Figure:
  figure = Figure(figsize=(width_inches, height_inches), dpi=DPI)
  FigureCanvasAgg(figure)
  return figure


def _save(figure: Figure, path: str) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=DPI)
  fs.makedirs(fs.parent(path) or '.')
  fs.write_bytes(path, buffer.getvalue())
  return path


def _bare(axes) -> None:
  axes.set_xticks([])
  axes.set_yticks([])
  for spine in axes.spines.values():
    spine.set_visible(False)


def augmentation_grid(
  originals: Sequence[np.ndarray],
  views_1: np.ndarray,
  views_2: np.ndarray,
  path: str,
  *,
  titles: Sequence[str] = (),
  suptitle: str = '',
) -> str:
  """Originals (any size, uint8 or float in [0, 1]) above their two views [N, S, S, 3] in [0, 1]."""
  num_images = len(originals)
  if not num_images or len(views_1) != num_images or len(views_2) != num_images:
    raise ValueError(
      f'augmentation_grid needs N > 0 originals and N views of each kind (got {num_images}, '
      f'{len(views_1)}, {len(views_2)}); pass one view pair per original'
    )
  figure = _new_figure(CELL_INCHES * num_images, CELL_INCHES * 3)
  grid = figure.subplots(3, num_images, squeeze=False)
  rows = (('original', originals), ('view 1', views_1), ('view 2', views_2))
  for row, (name, images) in enumerate(rows):
    for column in range(num_images):
      axes = grid[row, column]
      image = np.asarray(images[column])
      axes.imshow(image if image.dtype == np.uint8 else np.clip(image, 0.0, 1.0))
      _bare(axes)
      if column == 0:
        axes.set_ylabel(name, fontsize=9)
      if row == 0 and column < len(titles):
        axes.set_title(titles[column], fontsize=8)
  if suptitle:
    figure.suptitle(suptitle, fontsize=9)
  figure.subplots_adjust(left=0.06, right=0.99, bottom=0.02, top=0.86 if suptitle else 0.92,
                         wspace=0.05, hspace=0.08)
  return _save(figure, path)


def tsne_scatter(
  points: np.ndarray,
  labels: np.ndarray,
  path: str,
  *,
  class_names: Sequence[str] = (),
  title: str = '',
) -> str:
  """A 2-D embedding [N, 2] coloured by class label [N] (-1 = unlabelled, drawn grey)."""
  points, labels = np.asarray(points), np.asarray(labels)
  if points.ndim != 2 or points.shape[1] != 2 or len(labels) != len(points):
    raise ValueError(
      f'tsne_scatter needs points [N, 2] and labels [N] (got {points.shape} and {labels.shape}); '
      'reduce the features to 2-D first'
    )
  figure = _new_figure(*TSNE_INCHES)
  axes = figure.subplots()
  unlabelled = labels < 0
  if unlabelled.any():
    axes.scatter(*points[unlabelled].T, s=6, c='lightgrey', label='unlabelled')
  classes = np.unique(labels[~unlabelled])
  palette = 'tab10' if len(classes) <= 10 else 'tab20' if len(classes) <= 20 else 'viridis'
  cmap = matplotlib.colormaps[palette]
  for rank, label in enumerate(classes):
    color = cmap(rank if len(classes) <= 20 else rank / max(len(classes) - 1, 1))
    name = class_names[label] if label < len(class_names) else str(label)
    axes.scatter(*points[labels == label].T, s=8, color=color, label=name)
  if len(classes) <= 20:
    axes.legend(fontsize=7, markerscale=2, loc='center left', bbox_to_anchor=(1.0, 0.5),
                frameon=False)
  _bare(axes)
  axes.set_title(title or f't-SNE of {len(points)} points', fontsize=10)
  figure.subplots_adjust(left=0.02, right=0.78, bottom=0.02, top=0.93)
  return _save(figure, path)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one metric; a step logged twice (a resumed run) keeps its last value."""
  by_step: dict[int, float] = {}
  for record in records:
    value = record.get(key)
    if 'step' in record and isinstance(value, (int, float)) and math.isfinite(value):
      by_step[int(record['step'])] = float(value)
  steps = np.asarray(sorted(by_step), np.int64)
  return steps, np.asarray([by_step[s] for s in steps], np.float64)


def curve_panels(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
  """The panels of `training_curves` that have data: [(title, [keys present])]."""
  present = {key for record in records for key in record}
  panels = []
  for title, keys in CURVE_PANELS:
    found = [key for key in keys if key in present and len(_series(records, key)[0])]
    if found:
      panels.append((title, found))
  return panels


def training_curves(
  records: Sequence[Mapping[str, Any]], path: str, *, title: str = ''
) -> str | None:
  """One panel per metric group of metrics.jsonl records; None (nothing written) if none apply."""
  panels = curve_panels(records)
  if not panels:
    return None
  columns = min(CURVE_COLUMNS, len(panels))
  rows = math.ceil(len(panels) / columns)
  figure = _new_figure(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows)
  grid = figure.subplots(rows, columns, squeeze=False)
  for index, (panel_title, keys) in enumerate(panels):
    axes = grid[index // columns, index % columns]
    for key in keys:
      steps, values = _series(records, key)
      marker = 'o' if len(steps) <= MARKER_MAX_POINTS else None
      axes.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=key)
    axes.set_title(panel_title, fontsize=10)
    axes.set_xlabel('step', fontsize=8)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if len(keys) > 1 or keys[0] != panel_title:
      axes.legend(fontsize=7, frameon=False)
  for index in range(len(panels), rows * columns):
    grid[index // columns, index % columns].set_visible(False)
  if title:
    figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  return _save(figure, path)


def stage_bars(
  top1_by_stage: Mapping[str, float],
  path: str,
  *,
  baseline: str = '',
  title: str = 'eval top-1 per stage',
  note: str = '',
) -> str:
  """One bar per stage (accuracy in [0, 1], drawn in %); the `baseline` stage grey and dashed;
  `note` is printed under the axes (e.g. what makes a bar not comparable with the others)."""
  if not top1_by_stage:
    raise ValueError('stage_bars needs at least one {stage: top-1}; run a stage with eval_at_end')
  names = list(top1_by_stage)
  values = np.asarray([100.0 * top1_by_stage[name] for name in names])
  figure = _new_figure(BAR_MARGIN_INCHES + BAR_INCHES * len(names), BAR_HEIGHT_INCHES)
  axes = figure.subplots()
  colors = ['0.6' if name == baseline else f'C{i}' for i, name in enumerate(names)]
  bars = axes.bar(range(len(names)), values, color=colors, width=0.65)
  if baseline in top1_by_stage:
    bars[names.index(baseline)].set_hatch('//')
    axes.axhline(100.0 * top1_by_stage[baseline], color='0.4', linestyle='--', linewidth=1)
  for bar, value in zip(bars, values):
    axes.text(bar.get_x() + bar.get_width() / 2, value + 1.0, f'{value:.1f}%', ha='center',
              va='bottom', fontsize=8)
  axes.set_xticks(range(len(names)), names, fontsize=8)
  axes.set_ylim(0, min(105.0, max(10.0, 1.25 * values.max())))  # Room for the value labels.
  axes.set_ylabel('top-1 (%)', fontsize=9)
  axes.set_title(title, fontsize=10)
  axes.grid(axis='y', alpha=0.3)
  if note:
    figure.text(0.01, 0.01, note, fontsize=7, color='0.3', ha='left', va='bottom', wrap=True)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
  else:
    figure.tight_layout()
  return _save(figure, path)
