"""SavedModel export and the test pipelines: a fresh process with TensorFlow alone loads the
export, and its outputs equal the library's."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt2_tf.core.run_folder import EXPORT_EXTRA
from gpt2_tf.data.tasks import EncodeContext, get_task
from gpt2_tf.serve.export import export_saved_model
from gpt2_tf.serve.inference import load_trained, predict
from tests.conftest import train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PROMPTS = [
    "The weather today",
    "Once upon a time",
    "",
    "GPT-2 is",
    "Hello world",
    "A",
    "1 2 3",
    "Zoë's café serves",
]
SAMPLED = ["I love 🤖🎉 and 中文", "Zoë's café serves", "", "日本語のテキスト"]


def in_fresh_process(code: str) -> dict:
    """Runs `code` with only TensorFlow imported; it prints one JSON line."""
    prelude = "import json, sys\nimport tensorflow as tf\n"
    check = "\nassert 'gpt2_tf' not in sys.modules and 'keras_hub' not in sys.modules\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + code + check],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _xla_functions(path: str) -> list[str]:
    """The names of the SavedModel's functions marked to compile with XLA."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return [
        fn.signature.name
        for graph in saved.meta_graphs
        for fn in graph.graph_def.library.function
        if fn.attr["_XlaMustCompile"].b
    ]


@pytest.mark.slow
def test_lm_export_serves_strings_like_generate(lm_dir, tmp_path):
    model, tokenizer, _ = load_trained(lm_dir)
    path = export_saved_model(model, tokenizer, str(tmp_path / "exports"))
    assert path.endswith(os.path.join("exports", "1"))
    # No function is marked for XLA: TensorFlow Serving runs it with its XLA compiler off.
    assert _xla_functions(path) == []
    served = in_fresh_process(f"""
f = tf.saved_model.load({path!r}).signatures["serving_default"]
res = {{}}
for n in (1, 8):
    out = f(prompts=tf.constant({PROMPTS!r}[:n]), max_new_tokens=tf.constant(12),
            temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
            seed=tf.constant(0))
    res[n] = {{k: v.numpy().tolist() for k, v in out.items()}}
    res[n]["outputs"] = [x.decode("utf-8") for x in res[n]["outputs"]]  # strict: valid UTF-8
sampled = []
for seed in range(4):  # sampled at a high temperature: byte tokens come out in any order
    out = f(prompts=tf.constant({SAMPLED!r}), max_new_tokens=tf.constant(24),
            temperature=tf.constant(2.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
            seed=tf.constant(seed))
    for text, ids, n in zip(out["outputs"].numpy(), out["output_ids"].numpy().tolist(),
                            out["lengths"].numpy().tolist()):
        sampled.append([text.decode("utf-8"), ids[:n]])
res["sampled"] = sampled

# Settings at and past their limits: clamped or refused as in Python (test_generation.py).
def run(prompts, temperature=1.0, top_k=0, top_p=1.0):
    out = f(prompts=tf.constant(prompts, tf.string), max_new_tokens=tf.constant(8),
            temperature=tf.constant(temperature), top_k=tf.constant(top_k),
            top_p=tf.constant(top_p), seed=tf.constant(3))
    return out["output_ids"].numpy().tolist(), out["outputs"].numpy().tolist()
limits = {{"none": [len(x) for x in run([])]}}
limits["free"], _ = run({PROMPTS!r})
limits["huge_k"], _ = run({PROMPTS!r}, top_k=10**6)
limits["greedy"], _ = run({PROMPTS!r}, temperature=0.0)
limits["p0"], _ = run({PROMPTS!r}, top_p=0.0)
for name, kw in (("nan", dict(temperature=float("nan"))), ("p", dict(top_p=1.5)),
                 ("k", dict(top_k=-1))):
    try:
        run({PROMPTS!r}, **kw)
        limits[name] = "accepted"
    except tf.errors.InvalidArgumentError as e:
        limits[name] = e.message
res["limits"] = limits
print(json.dumps(res))
""")
    prompts = [p or "<|endoftext|>" for p in PROMPTS]  # an empty prompt continues from EOT
    ids = [tokenizer.encode(p, allow_special=True) for p in prompts]
    expected = model.generate(ids, 12, stop_token_ids=(tokenizer.eos_id,))
    for n in ("1", "8"):
        got = served[n]
        for i, row in enumerate(expected[: int(n)]):
            assert got["output_ids"][i][: got["lengths"][i]] == row
            text = tokenizer.decode([t for t in row if t != tokenizer.eos_id])
            assert got["outputs"][i] == text
    for text, ids in served["sampled"]:  # what the Python path makes of the same ids
        assert text == tokenizer.decode([t for t in ids if t != tokenizer.eos_id])

    limits = served["limits"]  # settings at and past their limits, from the same process
    assert limits["none"] == [0, 0]  # no prompts, no outputs
    assert limits["huge_k"] == limits["free"] and limits["p0"] == limits["greedy"]
    assert "temperature must be a finite number" in limits["nan"]
    assert "top_p must be between 0 and 1" in limits["p"]
    assert "top_k must be 0 (off) or more" in limits["k"]


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs(lm_dir, tmp_path):
    model, tokenizer, _ = load_trained(lm_dir)
    path = export_saved_model(model, tokenizer, str(tmp_path / "exports"), version=3)
    cli = os.path.join(BIN, "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", path], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in (
        "serving_default",
        "prompts",
        "max_new_tokens",
        "outputs",
        "output_ids",
        "lengths",
    ):
        assert name in shown.stdout
    exprs = 'prompts=["Hello world"];max_new_tokens=5;temperature=0.0;top_k=0;top_p=1.0;seed=0'
    ran = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            exprs,
        ],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "outputs" in ran.stdout and "lengths" in ran.stdout


@pytest.mark.slow
def test_classifier_export_and_test_pipeline(classifier_dir, tmp_path):
    model_dir = classifier_dir
    model, tokenizer, task = load_trained(model_dir)
    texts = ["i feel so happy today", "i am scared of the dark", "this makes me furious"]
    expected = predict(model, tokenizer, task, [{"text": t} for t in texts])
    path = export_saved_model(model, tokenizer, str(tmp_path / "exports"), task)
    served = in_fresh_process(f"""
out = tf.saved_model.load({path!r}).signatures["serving_default"](text=tf.constant({texts!r}))
print(json.dumps({{"p": out["probabilities"].numpy().tolist(),
                  "labels": [x.decode() for x in out["labels"].numpy()]}}))
""")
    names = task["label_names"]
    for got, labels, want in zip(served["p"], served["labels"], expected):
        np.testing.assert_allclose(got, [want["probabilities"][n] for n in names], atol=1e-4)
        assert labels == want["label"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.classification_tuning.test",
            f"--model_dir={model_dir}",
            "--prompt=i feel so happy today",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["label"] == expected[0]["label"] and set(line["probabilities"]) == set(names)


@pytest.mark.slow
def test_entailment_export_takes_premises_and_hypotheses(rte_dir, tmp_path):
    model_dir = train_tiny(rte_dir, tmp_path / "run", lora_rank=4)
    model, tokenizer, task = load_trained(model_dir)
    long = "The committee, after a long debate in the old hall, voted on the budget. " * 20
    pairs = [
        ("A dog runs in the park.", "An animal is outside."),
        ("It rained.", "It was dry."),
        (long, "The committee voted."),  # longer than seq_len: the premise is cut, in the graph
    ]
    inputs = [{"premise": p, "hypothesis": h} for p, h in pairs]
    spec = get_task(task["task"])
    ctx = EncodeContext(tokenizer, task["seq_len"], {})
    assert len(tokenizer.encode(long)) > task["seq_len"]
    assert len(spec.prompt(inputs[2], ctx)) == task["seq_len"]
    expected = predict(model, tokenizer, task, inputs)
    path = export_saved_model(model, tokenizer, str(tmp_path / "exports"), task)
    with open(os.path.join(path, EXPORT_EXTRA), encoding="utf-8") as f:
        extra = json.load(f)
    assert extra["input_fields"] == ["premise", "hypothesis"]
    assert extra["signatures"]["fields"]["inputs"] == ["premise", "hypothesis"]
    served = in_fresh_process(f"""
loaded = tf.saved_model.load({path!r})
res = {{}}
for name in ("serving_default", "fields"):
    out = loaded.signatures[name](premise=tf.constant({[p for p, _ in pairs]!r}),
                                  hypothesis=tf.constant({[h for _, h in pairs]!r}))
    res[name] = out["probabilities"].numpy().tolist()
print(json.dumps(res))
""")
    for name in ("serving_default", "fields"):
        for got, want in zip(served[name], expected, strict=True):
            np.testing.assert_allclose(
                got, [want["probabilities"][n] for n in task["label_names"]], atol=1e-4
            )


@pytest.mark.slow
def test_lm_fields_signature_applies_the_template_in_the_graph(lm_dir, tmp_path):
    """`fields` takes Dolly's instruction and context; it generates what `serving_default`
    generates from the prompt the Python template renders, and what `predict` generates."""
    model, tokenizer, task = load_trained(lm_dir)
    long = "Zoë's café serves coffee, tea and cake to the people of the old town. " * 12
    inputs = [
        {"instruction": "Name a colour.", "context": ""},  # no Context section
        {"instruction": "Summarise the text.", "context": "Cats sleep a lot. They purr."},
        {"instruction": "Where is the café?", "context": long},  # the context is cut
    ]
    max_new = 8
    expected = predict(model, tokenizer, task, inputs, max_new_tokens=max_new)
    assert len(tokenizer.encode(expected[2]["prompt"])) < len(tokenizer.encode(long))
    prompts = [x["prompt"] for x in expected]  # the Python-rendered (and fitted) prompts
    path = export_saved_model(model, tokenizer, str(tmp_path / "exports"), task)
    with open(os.path.join(path, EXPORT_EXTRA), encoding="utf-8") as f:
        extra = json.load(f)
    assert extra["input_fields"] == ["instruction", "context"]
    assert extra["signatures"]["serving_default"]["inputs"][0] == "prompts"
    assert extra["signatures"]["fields"]["inputs"][:2] == ["instruction", "context"]
    served = in_fresh_process(f"""
loaded = tf.saved_model.load({path!r})
settings = dict(max_new_tokens=tf.constant({max_new}), temperature=tf.constant(0.0),
                top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))
res = {{}}
out = loaded.signatures["fields"](instruction=tf.constant({[x["instruction"] for x in inputs]!r}),
                                  context=tf.constant({[x["context"] for x in inputs]!r}),
                                  **settings)
res["fields"] = {{k: v.numpy().tolist() for k, v in out.items() if v.dtype != tf.string}}
res["fields"]["prompts"] = [x.decode("utf-8") for x in out["prompts"].numpy()]
res["fields"]["outputs"] = [x.decode("utf-8") for x in out["outputs"].numpy()]
out = loaded.signatures["serving_default"](prompts=tf.constant({prompts!r}), **settings)
res["prompts"] = {{k: v.numpy().tolist() for k, v in out.items() if v.dtype != tf.string}}
empty = loaded.signatures["fields"](instruction=tf.zeros([0], tf.string),
                                    context=tf.zeros([0], tf.string), **settings)
res["empty"] = [v.shape[0] for v in empty.values()]
print(json.dumps(res))
""")
    fields, plain = served["fields"], served["prompts"]
    assert fields["output_ids"] == plain["output_ids"] and fields["lengths"] == plain["lengths"]
    assert fields["prompts"] == prompts
    assert fields["outputs"] == [x["output"] for x in expected]
    assert served["empty"] == [0, 0, 0, 0]


def test_instruction_prompts_use_the_training_template(lm_dir, tokenizer):
    model, tok, task = load_trained(lm_dir)
    out = predict(model, tok, task, [{"instruction": "Name a colour."}], max_new_tokens=3)
    assert out[0]["prompt"] == "### Instruction:\nName a colour.\n\n### Response:\n"
    assert isinstance(out[0]["output"], str)
    with pytest.raises(FileNotFoundError, match="no task.json"):
        load_trained(os.path.dirname(lm_dir))
