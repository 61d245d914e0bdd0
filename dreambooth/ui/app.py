"""The page (Gradio Blocks): Photos, Settings, Train, Results. Layout and wiring only; what each
button does is in handlers.py, and the Settings widgets are made from form.form_fields()."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .form import form_fields
from .handlers import Handlers, as_values
from .jobs import JobQueue
from .runs import MAX_PHOTO_BYTES

# the micro world's images are 32-64 px: enlarge them with sharp pixels, and keep previews small
CSS = "#db-previews img, #db-gallery img {image-rendering: pixelated}"
DEFAULT_PROMPTS = "a <id> star on the beach\na <id> star in the snow"


def widget(gr, ff, value):
    """One Settings widget for a config field: label = the field's name (as in YAML and the CLI),
    info = its help text."""
    common = dict(label=ff.name, info=ff.help, value=value, elem_id=f"field-{ff.name}")
    if ff.kind == "bool":
        return gr.Checkbox(**common)
    if ff.kind == "choice":
        return gr.Dropdown(choices=list(ff.choices), **common)
    return gr.Textbox(placeholder="default" if ff.nullable else None, **common)


def build(work_dir: Path, queue: JobQueue):
    """-> (the Blocks app, the Settings widgets by field name)."""
    import gradio as gr
    from ..world.subjects import SUBJECTS
    h = Handlers(work_dir, queue)
    fields = form_fields()
    names = [ff.name for ff in fields]
    defaults = h.form_values("")
    widgets: dict[str, object] = {}

    with gr.Blocks(title="dreambooth", delete_cache=(3600, 3600)) as demo:
        current = gr.State("")
        gr.Markdown("# dreambooth\nPersonalize a text-to-image model from a few photos. Everything stays on this "
                    "machine; runs are kept under the work folder.")
        header = gr.Markdown(elem_id="db-header")
        with gr.Tabs():
            with gr.Tab("Photos", id="photos"):
                upload = gr.File(label="Photos of one subject (3-20; JPEG, PNG, WebP...), with a caption file "
                                       "per photo if you have them (dog1.txt beside dog1.jpg)",
                                 file_count="multiple", type="filepath", elem_id="db-upload")
                with gr.Row():
                    subject = gr.Dropdown(choices=list(SUBJECTS), value="striped_star",
                                          label="...or try a micro-world subject (offline)")
                    use_subject = gr.Button("Use this subject's photos", elem_id="db-use-subject")
                photo_msg = gr.Markdown(elem_id="db-photo-msg")
                photo_table = gr.Dataframe(headers=["photo", "used?", "why skipped"], interactive=False,
                                           elem_id="db-photo-table")
                crops = gr.Gallery(label="The crops the model will see", columns=8, height="auto")
            with gr.Tab("Settings", id="settings"):
                identifier_shown = gr.Markdown(elem_id="db-identifier")
                for ff in fields:
                    if ff.main:
                        widgets[ff.name] = widget(gr, ff, defaults[ff.name])
                with gr.Accordion("Advanced (every other setting, from the config tree)", open=False):
                    for section in dict.fromkeys(ff.section for ff in fields if not ff.main):
                        gr.Markdown(f"### {section}")
                        for ff in fields:
                            if not ff.main and ff.section == section:
                                widgets[ff.name] = widget(gr, ff, defaults[ff.name])
                with gr.Row():
                    load_file = gr.File(label="Load config (YAML)", file_types=[".yaml", ".yml"], type="filepath")
                    save_btn = gr.Button("Save config")
                    saved_file = gr.File(label="Saved config", interactive=False)
                settings_msg = gr.Markdown(elem_id="db-settings-msg")
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary", elem_id="db-train")
                    stop_btn = gr.Button("Stop (saves a checkpoint)", elem_id="db-stop")
                    resume_btn = gr.Button("Resume", elem_id="db-resume")
                train_msg = gr.Markdown(elem_id="db-train-msg")
                status = gr.Markdown(elem_id="db-status")
                bar = gr.HTML()
                curve = gr.HTML()
                previews = gr.Gallery(label="Validation previews (set validation_prompt)", columns=4, height=240,
                                      object_fit="contain", elem_id="db-previews")
                plan = gr.Textbox(label="Plan", lines=10, interactive=False, elem_id="db-plan")
                log = gr.Textbox(label="Output", lines=10, interactive=False, max_lines=20)
            with gr.Tab("Results", id="results"):
                prompts = gr.Textbox(label="Prompts, one a line ('<id>' is the identifier)", lines=3,
                                     value=DEFAULT_PROMPTS, elem_id="db-prompts")
                with gr.Row():
                    n_images = gr.Slider(1, 8, value=4, step=1, label="images per prompt", elem_id="db-n")
                    steps = gr.Slider(2, 100, value=25, step=1, label="sampler steps", elem_id="db-steps")
                render_btn = gr.Button("Render", variant="primary", elem_id="db-render")
                results_msg = gr.Markdown(elem_id="db-results-msg")
                gallery = gr.Gallery(label="Gallery (base, then SR, where the run has a cascade)", columns=4,
                                     height=420, object_fit="contain", elem_id="db-gallery")
                with gr.Row():
                    download_btn = gr.Button("Prepare downloads (model zip, LoRA / single file if any)")
                    download_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                gr.Markdown("### Runs in the work folder")
                with gr.Row():
                    run_pick = gr.Dropdown(label="Run", choices=[], elem_id="db-run-pick")
                    open_btn = gr.Button("Open")
                    new_btn = gr.Button("New run")
                runs_table = gr.Dataframe(headers=["run", "state", "steps", "identifier"], interactive=False)
        timer = gr.Timer(1.0)

        form_inputs = [widgets[n] for n in names]
        form_outputs = form_inputs
        train_outputs = [header, status, bar, curve, plan, previews, log, identifier_shown]

        def values(*args):
            return as_values(names, args)

        def photos_out(name, *form):
            message, rows, shown = h.photo_view(name, values(*form))
            return name, h.header(name), message, rows, shown

        def train_out(name):
            v = h.train_view(name)
            return (h.header(name), v["status"], v["bar"], v["curve"], v["plan"], v["previews"], v["log"],
                    v["identifier"])

        def runs_out(name):
            table = h.runs_table()
            return gr.update(choices=[r[0] for r in table], value=name or None), table

        def open_run(name):
            form = h.form_values(name)
            return (name, *[form[n] for n in names], *photos_out(name, *[form[n] for n in names])[1:],
                    *train_out(name), *runs_out(name))

        opened = [current, *form_outputs, header, photo_msg, photo_table, crops, *train_outputs, run_pick, runs_table]
        demo.load(lambda: open_run(h.initial_run()), outputs=opened)
        open_btn.click(open_run, inputs=run_pick, outputs=opened)
        new_btn.click(lambda: open_run(""), outputs=opened)

        photo_outputs = [current, header, photo_msg, photo_table, crops]

        def on_upload(name, files, *form):
            name, problem = h.upload(name, files, values(*form))
            out = photos_out(name, *form)
            return (*out[:2], problem or out[2], *out[3:])
        upload.upload(on_upload, inputs=[current, upload, *form_inputs], outputs=photo_outputs)

        def on_subject(name, subject, *form):
            name, problem = h.use_subject(name, subject)
            out = photos_out(name, *form)
            from ..world.subjects import SUBJECTS
            return (*out[:2], problem or out[2], *out[3:], SUBJECTS[subject].cls)
        use_subject.click(on_subject, inputs=[current, subject, *form_inputs],
                          outputs=[*photo_outputs, widgets["class_name"]])

        def on_load_config(path):
            form, message = h.load_config(path)
            if form is None:
                return (*[gr.update() for _ in names], message)
            return (*[form[n] for n in names], message)
        load_file.upload(on_load_config, inputs=load_file, outputs=[*form_outputs, settings_msg])
        save_btn.click(lambda name, *form: h.save_config(name, values(*form)), inputs=[current, *form_inputs],
                       outputs=[saved_file, settings_msg])

        def on_train(name, *form):
            name, message = h.train(name, values(*form))
            return (name, message, *train_out(name), *runs_out(name))
        train_btn.click(on_train, inputs=[current, *form_inputs],
                        outputs=[current, train_msg, *train_outputs, run_pick, runs_table])
        stop_btn.click(h.stop, inputs=current, outputs=train_msg)
        resume_btn.click(h.resume, inputs=current, outputs=train_msg)
        shown_previews = gr.State([])

        def on_tick(name, shown):
            # a gallery sent again every second blinks: send the previews only when a new one was written
            out = train_out(name)
            changed = out[5] != shown
            return (*out[:5], out[5] if changed else gr.skip(), *out[6:], out[5])
        timer.tick(on_tick, inputs=[current, shown_previews], outputs=[*train_outputs, shown_previews],
                   show_progress="hidden")

        render_btn.click(h.render, inputs=[current, prompts, n_images, steps], outputs=[gallery, results_msg])
        download_btn.click(h.downloads, inputs=current, outputs=[download_files, results_msg])
    return demo, widgets


def serve(work_dir: Path, host: str = "127.0.0.1", port: int = 7860) -> None:
    """`dreambooth ui`: serve the page until Ctrl-C; a running job is stopped cleanly (checkpoint) on exit."""
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    # gradio keeps uploads in its own temporary folder until we copy them into the run: keep it in ours
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_dir / ".uploads"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    queue = JobQueue(work_dir)
    demo, _ = build(work_dir, queue)
    signal.signal(signal.SIGTERM, _as_ctrl_c)   # a plain `kill` also stops the running job with a checkpoint
    try:
        url = launch(demo, work_dir, host, port)
        print(f"dreambooth UI at {url} (work folder {work_dir}); Ctrl-C to quit", flush=True)
        demo.block_thread()
    finally:
        queue.close()
        demo.close()


def _as_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def launch(demo, work_dir: Path, host: str, port: int, tries: int = 3) -> str:
    """Start the server; -> its address. Gradio checks that its own page answers within a few seconds
    and raises ValueError if not, which a busy machine can miss: try again before giving up."""
    from ..errors import DreamboothError
    for attempt in range(tries):
        try:
            _, url, _ = demo.queue(default_concurrency_limit=4).launch(
                server_name=host, server_port=port, allowed_paths=[str(work_dir)], max_file_size=MAX_PHOTO_BYTES,
                quiet=True, prevent_thread_lock=True, footer_links=[], css=CSS)
            return url
        except OSError as e:
            raise DreamboothError(f"The UI cannot listen on {host}:{port} ({e}). Pass another --port.") from None
        except ValueError as e:
            demo.close()
            if attempt == tries - 1:
                raise DreamboothError(f"The UI started but its page at http://{host}:{port} did not answer ({e}). "
                                      "Check that nothing blocks connections to this machine's own address.") from None
    raise AssertionError("unreachable")
