"""Reading prepared TFRecords back: each epoch is a uniform, seeded permutation of its split."""

import os

import numpy as np
import pytest

from gpt2_tf.core.reports import write_json
from gpt2_tf.data.records import ShardedWriter, load_tfrecords, serialize

N, SEQ_LEN = 30_000, 4  # more examples than the old 10,000-example shuffle window


@pytest.fixture(scope="module")
def ordered_split(tmp_path_factory):
    """A training split written in source order (as prep writes an alphabetical Wiktionary),
    example i holding token i first, so the order read back is visible."""
    folder = str(tmp_path_factory.mktemp("ordered"))
    with ShardedWriter(folder, 2) as writer:  # two shards, round-robin, as prep writes them
        for i in range(N):
            writer.write("train", serialize([i, 1, 2, 3], SEQ_LEN, i, 0), SEQ_LEN)
    meta = {"task": "t", "kind": "lm", "seq_len": SEQ_LEN, "pad_id": 0, "eos_id": 0}
    write_json(os.path.join(folder, "metadata.json"), {**meta, "splits": writer.counts})
    return folder


def epoch_order(folder, seed):
    ds = load_tfrecords(folder, "train", 1000, shuffle=True, seed=seed)
    return np.concatenate([x["token_ids"].numpy()[:, 0] for x, _, _ in ds])


def test_each_epoch_is_a_uniform_seeded_permutation(ordered_split):
    order = epoch_order(ordered_split, seed=7)
    assert sorted(order.tolist()) == list(range(N))  # every example once
    # The first 10% of the epoch draws from the whole file: its share of the file's last 30% is
    # 30% (a binomial over 3,000 draws: 0.3 +- 0.0084), not 0 as with a 10,000-example window.
    head = order[: N // 10]
    assert abs(np.mean(head >= 0.7 * N) - 0.3) < 0.05
    # And the position of an example in the epoch is independent of its place in the file.
    rank = np.empty(N)
    rank[order] = np.arange(N)
    assert abs(np.corrcoef(np.arange(N), rank)[0, 1]) < 0.05
    np.testing.assert_array_equal(epoch_order(ordered_split, seed=7), order)  # seeded
    other = epoch_order(ordered_split, seed=8)  # the next epoch's seed: another permutation
    assert np.mean(other == order) < 0.01


def test_a_resumed_epoch_reads_the_rest_of_the_same_permutation(ordered_split, tmp_path):
    """Training's epoch data after `skip` steps is exactly the tail of the whole epoch's, so a
    run resumed mid-epoch sees the examples the uninterrupted run would have seen."""
    from gpt2_tf.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(ordered_split, str(tmp_path), batch_size=1000, strategy="one_device")
    trainer = Trainer(cfg)

    def ids(epoch, skip):
        batches = trainer._epoch_dataset(epoch, skip)
        return np.concatenate([x["token_ids"].numpy()[:, 0] for x, _, _ in batches])

    whole = ids(0, 0)
    assert len(whole) == N and len(set(whole.tolist())) == N
    np.testing.assert_array_equal(ids(0, 12), whole[12_000:])
    assert np.mean(ids(1, 0) == whole) < 0.01  # the next epoch: another permutation


def test_records_are_the_same_bytes_in_any_process():
    """A record's features are a protobuf map, whose order followed Python's hash seed, so
    "same inputs and seed give identical files" held within a process only."""
    import subprocess
    import sys

    code = (
        "from gpt2_tf.data.records import serialize; "
        "print(serialize([464, 2068, 7586], 3, 5, 1).hex(), serialize([1, 2], 2, 0, label=3).hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(4)
    }
    assert len(outs) == 1
