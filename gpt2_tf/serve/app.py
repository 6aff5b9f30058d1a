"""A Streamlit page for trying a trained model or a SavedModel export in the browser.

    make app MODEL=runs/<task>/final
    streamlit run gpt2_tf/app.py -- --model PATH

PATH is a trained folder (`runs/<task>/final`, with `task.json`), a SavedModel version folder
(`exports/<task>/3`) or an export folder, whose highest version is then used; the sidebar can
change it. LM tasks get a prompt, the sampling controls and the continuation; classifiers get the
label probabilities as a bar chart and the top label. The input boxes are the task's
`input_fields` (e.g. instruction and context, or premise and hypothesis). A loaded model is
cached per folder and modification time, so a retrained or re-exported model is picked up on the
next run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import streamlit as st

from gpt2_tf.core.run_folder import EXPORT_EXTRA, TASK_FILE
from gpt2_tf.data.tasks import DEFAULT_TASK
from gpt2_tf.model.generation import SAMPLERS, sampler_settings

DEFAULT_MODEL = os.path.join("runs", DEFAULT_TASK, "final")
FIELDS, PROMPTS = "fields", "serving_default"  # the export's signatures (serve/export.py)


def model_arg(argv: list[str]) -> str:
    """The --model path from the arguments after `streamlit run gpt2_tf/app.py --`."""
    parser = argparse.ArgumentParser(add_help=False)  # a --help would end the page's run
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Trained folder or export.")
    return parser.parse_known_args(argv)[0].model  # known: pytest's own argv under AppTest


def resolve(path: str) -> tuple[str, str]:
    """("trained" | "export", folder) for a trained folder, an export version or an export dir."""
    path = os.path.expanduser(path.strip())
    if not path:
        raise FileNotFoundError("no model folder given")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder")
    if os.path.isfile(os.path.join(path, TASK_FILE)):
        return "trained", path
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "export", path
    versions = [
        int(n)
        for n in os.listdir(path)
        if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))
    ]
    if versions:
        return "export", os.path.join(path, str(max(versions)))
    raise FileNotFoundError(
        f"{path}: not a trained model (no {TASK_FILE}) nor a SavedModel export (no "
        "saved_model.pb, no numbered version folders); pass runs/<task>/final or exports/<task>"
    )


class TrainedModel:
    """A folder written by training, run through `gpt2_tf.serve.inference.predict`."""

    def __init__(self, path: str):
        from gpt2_tf.data.tasks import get_task
        from gpt2_tf.serve.inference import load_trained

        self.model, self.tokenizer, self.task = load_trained(path)
        self.input_fields = get_task(self.task["task"]).input_fields
        self.max_positions = self.model.config.n_positions

    def _predict(self, fields: dict, settings: dict) -> dict:
        from gpt2_tf.serve.inference import predict

        return predict(self.model, self.tokenizer, self.task, [fields], **settings)[0]

    def generate(self, fields: dict, settings: dict) -> dict:
        """{"prompt": as the model sees it, "output": the continuation}."""
        return self._predict(fields, settings)

    def classify(self, fields: dict) -> dict[str, float]:
        return self._predict(fields, {})["probabilities"]


class ExportedModel:
    """A SavedModel version folder, run through its `fields` signature: the task's raw input
    fields in, the template applied in the graph. An LM exported without its task has only
    `serving_default`, which takes a finished prompt (one "text" field here)."""

    def __init__(self, path: str):
        import tensorflow as tf

        extra = os.path.join(path, EXPORT_EXTRA)
        if not os.path.isfile(extra):
            raise FileNotFoundError(f"{path}: no {EXPORT_EXTRA}; export with gpt2_tf.serve.export")
        with open(extra, encoding="utf-8") as f:
            extra = json.load(f)
        self.task = extra["task"]
        self._loaded = tf.saved_model.load(path)  # the signature needs its object kept alive
        if FIELDS in self._loaded.signatures:
            self._serve, self.input_fields = self._loaded.signatures[FIELDS], extra["input_fields"]
        elif self.task["kind"] != "classifier":
            self._serve, self.input_fields = self._loaded.signatures[PROMPTS], ("text",)
        else:
            raise ValueError(f"{path}: no {FIELDS!r} signature; re-export it with gpt2_tf")
        self.max_positions = None  # the export clips max_new_tokens itself

    def _texts(self, fields: dict) -> dict:
        import tensorflow as tf

        if FIELDS not in self._loaded.signatures:
            return {"prompts": tf.constant([fields["text"]])}
        return {name: tf.constant([fields.get(name, "")]) for name in self.input_fields}

    def generate(self, fields: dict, settings: dict) -> dict:
        import tensorflow as tf

        temperature, top_k, top_p = sampler_settings(
            settings["sampler"], settings["temperature"], settings["top_k"], settings["top_p"]
        )
        out = self._serve(
            **self._texts(fields),
            max_new_tokens=tf.constant(settings["max_new_tokens"], tf.int32),
            temperature=tf.constant(temperature, tf.float32),
            top_k=tf.constant(top_k, tf.int32),
            top_p=tf.constant(top_p, tf.float32),
            seed=tf.constant(settings["seed"], tf.int32),
        )
        text = lambda name: out[name][0].numpy().decode("utf-8", "replace")  # noqa: E731
        prompt = text("prompts") if "prompts" in out else fields["text"]  # as the model saw it
        return {"prompt": prompt, "output": text("outputs")}

    def classify(self, fields: dict) -> dict[str, float]:
        out = self._serve(**self._texts(fields))
        probs = out["probabilities"].numpy()[0].round(4).tolist()
        return dict(zip(self.task["label_names"], probs))


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load(kind: str, folder: str, stamp: float):
    """The model behind a resolved folder; `stamp` (its files' mtime) only keys the cache."""
    del stamp
    return TrainedModel(folder) if kind == "trained" else ExportedModel(folder)


def load_model(path: str):
    """(model, folder) for any accepted path, cached (see `load`)."""
    kind, folder = resolve(path)
    marker = TASK_FILE if kind == "trained" else "saved_model.pb"
    return load(kind, folder, os.path.getmtime(os.path.join(folder, marker))), folder


def load_or_report(path: str):
    """(model, folder), or (None, None) after an st.error naming the folder and the problem."""
    try:
        return load_model(path)
    except Exception as exc:  # any unreadable folder: a message on the page, not a traceback
        st.error(f"**Could not load a model from `{path}`**\n\n{type(exc).__name__}: {exc}")
        st.caption(
            "Give a trained folder (runs/<task>/final) or an export (exports/<task>) in the "
            "sidebar, or start the page with `-- --model PATH`."
        )
        return None, None


def generation_settings(max_positions: int | None) -> dict:
    """The sidebar's sampling controls; a control the sampler does not use is disabled."""
    side = st.sidebar
    side.subheader("Generation")
    sampler = side.radio("Sampler", SAMPLERS, index=3, key="sampler", horizontal=True)
    top = min(256, max_positions - 1) if max_positions else 256
    return {
        "sampler": sampler,
        "max_new_tokens": side.slider("Maximum new tokens", 1, top, min(64, top), key="max_new"),
        "temperature": side.slider(
            "Temperature", 0.05, 2.0, 0.8, 0.05, key="temperature", disabled=sampler == "greedy"
        ),
        "top_k": side.slider("Top-k", 1, 200, 50, key="top_k", disabled=sampler != "top_k"),
        "top_p": side.slider(
            "Top-p", 0.05, 1.0, 0.9, 0.05, key="top_p", disabled=sampler != "top_p"
        ),
        "seed": int(side.number_input("Seed", 0, 2**31 - 1, 0, key="seed")),
    }


def input_fields(names) -> dict:
    """A text area for each of the task's input fields (`TaskSpec.input_fields`)."""
    return {
        name: st.text_area(name.replace("_", " ").capitalize(), key=name, height=120)
        for name in names
    }


def show_generation(result: dict) -> None:
    """The continuation, and the prompt with the task's template applied."""
    st.subheader("Output")
    if result["output"].strip():
        st.code(result["output"], language=None, wrap_lines=True)
    else:
        st.info("The model produced only whitespace or stopped at once (<|endoftext|>).")
    with st.expander("Prompt as the model sees it"):
        st.code(result["prompt"], language=None, wrap_lines=True)


def show_probabilities(probs: dict[str, float]) -> None:
    """The top label and every label's probability, in the task's label order."""
    label = max(probs, key=probs.get)
    st.success(f"Top label: **{label}** ({probs[label]:.1%})")
    st.bar_chart(
        {"probability": probs}, horizontal=True, sort=False, x_label="", y_label="probability"
    )


def run_model(model, folder: str, fields: dict, settings: dict) -> None:
    """Runs one input and keeps the result in the session, so it stays through reruns."""
    if not next(iter(fields.values()), "").strip():  # the first field is the one needed
        st.warning("Enter some text first.")
        return
    try:
        with st.spinner("Running the model…"):
            if model.task["kind"] == "classifier":
                result = {"probabilities": model.classify(fields)}
            else:
                result = {"generation": model.generate(fields, settings)}
    except Exception as exc:  # e.g. prompt + new tokens exceed the context: say so, no traceback
        st.error(f"The model could not run: {type(exc).__name__}: {exc}")
        return
    st.session_state["result"] = (folder, result)


def show_result(folder: str) -> None:
    """The last result, if it came from the model now shown."""
    shown_for, result = st.session_state.get("result", (None, None))
    if shown_for != folder:  # a result from another model folder
        return
    if "generation" in result:
        show_generation(result["generation"])
    else:
        show_probabilities(result["probabilities"])


def main() -> None:
    st.set_page_config(page_title="gpt2_tf", page_icon="✍️")
    st.title("gpt2_tf")
    path = st.sidebar.text_input("Model folder", model_arg(sys.argv[1:]), key="model_path")
    model, folder = load_or_report(path)
    if model is None:
        st.stop()
    kind = model.task["kind"]
    st.caption(f"`{folder}` · task {model.task.get('task', 'lm')} · {kind}")
    settings = generation_settings(model.max_positions) if kind != "classifier" else {}
    fields = input_fields(model.input_fields)
    if st.button("Classify" if kind == "classifier" else "Generate", key="run", type="primary"):
        run_model(model, folder, fields, settings)
    show_result(folder)


if __name__ == "__main__":  # streamlit runs the page as __main__; importing it runs nothing
    main()
