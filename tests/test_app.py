"""The Streamlit page (`gpt2_tf/app.py`), driven headless by Streamlit's AppTest on tiny models
trained here for two steps: what the page shows equals what the library returns."""

import json
import os
import sys

import pytest

pytest.importorskip("streamlit")  # the `app` extra
import pyarrow as pa  # noqa: E402  (a dependency of streamlit)
from streamlit.testing.v1 import AppTest  # noqa: E402

from gpt2_tf.core.run_folder import EXPORT_EXTRA  # noqa: E402
from gpt2_tf.data.tasks.instruction import render_prompt  # noqa: E402
from gpt2_tf.serve.app import DEFAULT_MODEL, load_model, model_arg, resolve  # noqa: E402
from gpt2_tf.serve.export import export_saved_model  # noqa: E402
from gpt2_tf.serve.inference import load_trained, predict  # noqa: E402

APP = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpt2_tf", "serve", "app.py"
)
PROMPT = "Name a colour."
CONTEXT = "The sky is blue and the grass is green."


def page(monkeypatch, model: str) -> AppTest:
    """The page as `streamlit run gpt2_tf/app.py -- --model MODEL` first shows it."""
    monkeypatch.setattr(sys, "argv", [APP, "--model", model])
    return AppTest.from_file(APP, default_timeout=120).run()


def submit(at: AppTest, **text_areas) -> AppTest:
    for key, value in text_areas.items():
        at.text_area(key=key).input(value)
    return at.button(key="run").click().run()


def chart_data(at: AppTest) -> dict:
    """{label: probability} from the page's bar chart (Arrow data inside the Vega-Lite element)."""
    (chart,) = at.get("vega_lite_chart")
    (dataset,) = chart.proto.datasets
    frame = pa.ipc.open_stream(dataset.data.data).read_all().to_pandas()
    labels, probs = frame.iloc[:, 0], frame["probability"]
    return dict(zip(labels, probs))


def test_model_path_comes_from_the_command_line():
    assert model_arg(["--model", "exports/x"]) == "exports/x"
    assert model_arg(["-q", "tests"]) == DEFAULT_MODEL


def test_resolve_picks_the_highest_export_version(tmp_path):
    for version in ("1", "10", "9"):
        os.makedirs(tmp_path / version)
        (tmp_path / version / "saved_model.pb").touch()
    os.makedirs(tmp_path / "11")  # no saved_model.pb: an unfinished export is not a version
    assert resolve(str(tmp_path)) == ("export", str(tmp_path / "10"))
    assert resolve(str(tmp_path / "9")) == ("export", str(tmp_path / "9"))
    (tmp_path / "task.json").write_text("{}")
    assert resolve(str(tmp_path))[0] == "trained"


@pytest.mark.parametrize("case", ["missing", "empty", "bad_task_json"])
def test_unusable_folder_shows_an_error_not_a_traceback(case, tmp_path, monkeypatch):
    folder = tmp_path / case
    if case != "missing":
        folder.mkdir()
    if case == "bad_task_json":
        (folder / "task.json").write_text("{not json")
    at = page(monkeypatch, str(folder))
    assert not at.exception
    (error,) = at.error
    assert "Could not load a model" in error.value and str(folder) in error.value
    assert not at.button  # the page stops before its controls


def test_lm_page_generates_what_the_library_generates(lm_dir, monkeypatch):
    at = page(monkeypatch, lm_dir)
    assert not at.error and "instruction_tuning" in at.caption[0].value
    at.sidebar.radio(key="sampler").set_value("top_k").run()  # enables the top-k slider
    assert at.sidebar.slider(key="top_p").disabled
    at.sidebar.slider(key="max_new").set_value(12)
    at.sidebar.slider(key="temperature").set_value(1.5)
    at.sidebar.slider(key="top_k").set_value(20)
    at.sidebar.number_input(key="seed").set_value(3)
    at = submit(at, instruction=PROMPT, context=CONTEXT)  # the task's input fields
    assert not at.exception and not at.error
    loaded, _ = load_model(lm_dir)  # the page's cached model: its generation trace is reused
    settings = dict(sampler="top_k", max_new_tokens=12, temperature=1.5, top_k=20, seed=3)
    args = loaded.model, loaded.tokenizer, loaded.task
    (want,) = predict(*args, [{"instruction": PROMPT, "context": CONTEXT}], **settings)
    assert "### Context:" in want["prompt"]
    output, prompt = (c.value for c in at.code)
    assert output == want["output"] and want["output"].strip()
    assert prompt == want["prompt"].rstrip("\n")  # st.code drops the final newline
    at.sidebar.slider(key="top_k").set_value(40).run()  # the result stays through a rerun
    assert at.code[0].value == output


def test_empty_prompt_asks_for_text(lm_dir, monkeypatch):
    at = submit(page(monkeypatch, lm_dir), instruction="   ", context="some context")
    assert "Enter some text" in at.warning[0].value and not at.code


@pytest.mark.slow  # trains a second model (~15 s)
def test_classifier_page_shows_probabilities_and_top_label(classifier_dir, monkeypatch):
    at = page(monkeypatch, classifier_dir)
    assert not at.sidebar.slider  # no sampling controls for a classifier
    assert at.button(key="run").label == "Classify"
    text = "i feel so happy today"
    at = submit(at, text=text)
    assert not at.exception and not at.error
    loaded, _ = load_model(classifier_dir)
    task = loaded.task
    (want,) = predict(loaded.model, loaded.tokenizer, task, [{"text": text}])
    assert chart_data(at) == pytest.approx(want["probabilities"])
    assert list(chart_data(at)) == task["label_names"]  # bars in the task's label order
    assert f"**{want['label']}**" in at.success[0].value


@pytest.mark.slow
def test_export_folder_serves_its_highest_version(lm_dir, classifier_dir, tmp_path, monkeypatch):
    model, tokenizer, task = load_trained(lm_dir)
    export_saved_model(model, tokenizer, str(tmp_path / "lm"), task, version=2)
    os.makedirs(tmp_path / "lm" / "1")
    (tmp_path / "lm" / "1" / "saved_model.pb").touch()  # an older version, never loaded
    at = submit(page(monkeypatch, str(tmp_path / "lm")), instruction=PROMPT)  # no context
    assert not at.exception and not at.error
    assert os.path.join("lm", "2") in at.caption[0].value
    assert at.code[-1].value == "### Instruction:\nName a colour.\n\n### Response:"  # template
    assert at.code[0].value.strip()  # top_p sampling by default: some text
    at = submit(at, context=CONTEXT)  # the Context section, rendered in the export's graph
    assert not at.exception and not at.error
    assert at.code[-1].value == render_prompt(PROMPT, CONTEXT).rstrip("\n")

    model, tokenizer, task = load_trained(classifier_dir)
    path = export_saved_model(model, tokenizer, str(tmp_path / "clf"), task)
    with open(os.path.join(path, EXPORT_EXTRA), encoding="utf-8") as f:
        assert json.load(f)["task"]["label_names"] == task["label_names"]
    at = submit(page(monkeypatch, path), text="i feel so happy today")
    (want,) = predict(model, tokenizer, task, [{"text": "i feel so happy today"}])
    assert chart_data(at) == pytest.approx(want["probabilities"], abs=1e-4)
