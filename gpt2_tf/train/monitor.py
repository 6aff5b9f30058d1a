"""What a training run leaves for a person: TensorBoard events, `metrics.csv`, periodic log lines.

TensorBoard runs under `output_dir/tensorboard/{train,validation}`: scalars (loss, perplexity or
accuracy, learning rate, gradient norm, tokens per second), the run's flags as text, and for LM
tasks a few sampled generations at each evaluation.
"""

from __future__ import annotations

import csv
import glob
import os
import time

import tensorflow as tf
from absl import logging

from gpt2_tf.core import run_folder


class Monitor:
    """`csv_columns` are metrics.csv's columns, fixed for the run: a row leaves the values it
    lacks empty, so each value stays under its own name (rows hold what a step logged).
    TensorBoard's writers open at the first value written, after `cut` has run."""

    def __init__(self, output_dir: str, csv_columns: list[str], enabled: bool = True):
        self.enabled, self.csv_columns = enabled, list(csv_columns)
        self.csv_path = os.path.join(output_dir, run_folder.METRICS_CSV)
        self.tensorboard = os.path.join(output_dir, run_folder.TENSORBOARD)
        self._writers = {}
        self._last_time, self._last_tokens = time.monotonic(), 0.0

    @property
    def writers(self) -> dict:
        if self.enabled and not self._writers:
            self._writers = {
                s: tf.summary.create_file_writer(os.path.join(self.tensorboard, s))
                for s in ("train", "validation")
            }
        return self._writers

    def cut(self, step: int) -> None:
        """Forgets what was logged after `step` (a run resuming from its checkpoint at `step`,
        or starting at 0 after a killed attempt): metrics.csv rows and TensorBoard events, so
        no step shows twice."""
        if not self.enabled:
            return
        self.truncate_csv(step)
        for path in glob.glob(os.path.join(self.tensorboard, "*", "events.*")):
            records, cut_short = [], False
            try:
                for record in tf.data.TFRecordDataset(path):
                    records.append(record.numpy())
            except tf.errors.DataLossError:  # killed mid-write: keep the whole records
                cut_short = True
            keep = [r for r in records if tf.compat.v1.Event.FromString(r).step <= step]
            if len(keep) < len(records) or cut_short:
                with tf.io.TFRecordWriter(path + ".tmp") as f:
                    for record in keep:
                        f.write(record)
                os.replace(path + ".tmp", path)  # whole, or not at all

    def flags(self, config: dict) -> None:
        if not self.enabled:
            return
        table = "\n".join(f"| {k} | `{v}` |" for k, v in sorted(config.items()))
        with self.writers["train"].as_default():
            tf.summary.text("flags", "| flag | value |\n|---|---|\n" + table, step=0)

    def tokens_per_second(self, total_tokens: float) -> float:
        now = time.monotonic()
        rate = (total_tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, total_tokens
        return rate

    def scalars(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.writers[split].as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
        self.writers[split].flush()

    def text(self, split: str, step: int, name: str, lines: list[str]) -> None:
        if self.enabled and lines:
            with self.writers[split].as_default():
                tf.summary.text(
                    name, "\n\n".join(f"`{i}` {line}" for i, line in enumerate(lines)), step=step
                )
            self.writers[split].flush()

    def log(self, step: int, total: int, values: dict) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        logging.info("step %d/%d  %s", step, total, shown)

    def csv_row(self, row: dict) -> None:
        """Appends a row; a key outside the columns is an error (it would have no header)."""
        if self.enabled:
            self._write_csv([row], "a")

    def _write_csv(self, rows: list[dict], mode: str) -> None:
        new = mode == "w" or not os.path.exists(self.csv_path)
        with open(self.csv_path, mode, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.csv_columns, restval="")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def truncate_csv(self, last_step: int) -> None:
        """On resume: forget rows logged after the checkpoint the run restarts from (the file is
        rewritten with this run's columns)."""
        if not (self.enabled and os.path.exists(self.csv_path)):
            return
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
        keep = set(self.csv_columns)
        self._write_csv([{k: v for k, v in r.items() if k in keep} for r in rows], "w")
