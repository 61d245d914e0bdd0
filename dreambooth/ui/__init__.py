"""`dreambooth ui`: the web UI (Gradio). form.py maps the config tree to widgets, runs.py keeps each
run's folder, jobs.py queues training in worker processes (worker.py), progress.py reads their
events, app.py lays out the page. No training logic lives here: the worker runs the CLI's own code."""
