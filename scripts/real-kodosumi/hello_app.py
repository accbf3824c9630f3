"""A tiny Kodosumi 1.1.0 flow app for checking kodomasu's client against a real Kodosumi.

The same two flows as the recorded fixtures (activities/tests/fixtures/kodosumi/) and the
simulator (activities/src/kodosumi/sim.rs):

- "Hello World" (GET/POST /): name (text, required), seconds (number 0..60), fail (checkbox),
  style (select plain|markdown). Refuses an empty name or seconds outside 0..60 with an
  InputsError (a 200 with `errors`). The run sleeps `seconds`, then returns Markdown
  "Hello <name>" (style plain) or "# Hello <name>\\nDone." (style markdown). A checked `fail`
  raises a KodosumiError "failed on purpose for <name>" (status error, `final` a Text). The
  name "crash" raises a plain RuntimeError instead (status error, `final` null).
- "Confirm Flow" (GET/POST /confirm): topic (text, required). The run takes a lock through
  `tracer.lock("confirm", ...)` whose form asks for a comment and an approval checkbox, then
  finishes with Markdown "Topic <topic>: approved=<ok> (<comment>)".

Run it with uvicorn (`uvicorn hello_app:app --port 8011`) in a process that can reach Ray
(RAY_ADDRESS), with this directory on the PYTHONPATH of the Ray workers too: the entry points
are given as "hello_app:run_hello" strings, imported inside the Runner actor.
"""

import asyncio

from kodosumi.core import InputsError, Launch, ServeAPI, Tracer, forms as F
from kodosumi.error import KodosumiError
from kodosumi import response
from fastapi import Request

app = ServeAPI()

hello_form = F.Model(
    F.Markdown("# Hello\nSays hello after a short sleep."),
    F.InputText(label="Name", name="name", placeholder="your name", required=True),
    F.InputNumber(label="Seconds", name="seconds", value="2", min_value=0, max_value=60),
    F.Checkbox(label="Fail", name="fail", option="fail on purpose", value=False),
    F.Select(
        label="Style",
        name="style",
        value="plain",
        option=[
            F.InputOption(label="Plain", name="plain"),
            F.InputOption(label="Markdown", name="markdown"),
        ],
    ),
    F.Submit("Submit"),
    F.Cancel("Cancel"),
)


async def run_hello(inputs: dict, tracer: Tracer):
    name = inputs.get("name") or "nobody"
    seconds = float(inputs.get("seconds") or 0)
    await tracer.markdown(f"working on **{name}**")
    print(f"hello job for {name}")
    if name == "crash":
        raise RuntimeError(f"crashed on purpose for {name}")
    await asyncio.sleep(seconds)
    if inputs.get("fail"):
        raise KodosumiError(f"failed on purpose for {name}")
    if inputs.get("style") == "markdown":
        return response.Markdown(f"# Hello {name}\nDone.")
    return response.Markdown(f"Hello {name}")


@app.enter(
    "/",
    model=hello_form,
    summary="Hello World",
    description="Greets a name after sleeping a few seconds.",
    tags=["test"],
    version="1.0.0",
    author="test@example.com",
    organization="local-test",
)
async def enter_hello(request: Request, inputs: dict):
    error = InputsError()
    if not (inputs.get("name") or "").strip():
        error.add(name="Please give a name.")
    try:
        seconds = float(inputs.get("seconds") or 0)
        if not 0 <= seconds <= 60:
            error.add(seconds="Between 0 and 60, please.")
    except (TypeError, ValueError):
        error.add(seconds="Not a number.")
    if error.has_errors():
        raise error
    return Launch(request, "hello_app:run_hello", inputs=inputs)


confirm_form = F.Model(
    F.Markdown("# Confirm\nAsks for approval before it finishes."),
    F.InputText(label="Topic", name="topic", required=True),
    F.Submit("Submit"),
    F.Cancel("Cancel"),
)


async def run_confirm(inputs: dict, tracer: Tracer):
    topic = inputs.get("topic") or "nothing"
    await asyncio.sleep(0.5)
    result = await tracer.lock("confirm", data={"topic": topic}, timeout=600)
    ok = bool((result or {}).get("ok"))
    comment = (result or {}).get("comment") or ""
    await asyncio.sleep(0.3)
    return response.Markdown(f"Topic {topic}: approved={ok} ({comment})")


@app.enter(
    "/confirm",
    model=confirm_form,
    summary="Confirm Flow",
    description="Human-in-the-loop lock test.",
    tags=["test", "hitl"],
    version="1.0.0",
    author="test@example.com",
)
async def enter_confirm(request: Request, inputs: dict):
    if not (inputs.get("topic") or "").strip():
        raise InputsError(topic="Please give a topic.")
    return Launch(request, "hello_app:run_confirm", inputs=inputs)


@app.lock("confirm")
async def confirm_lock(data: dict):
    return F.Model(
        F.Markdown(f"Approve topic **{data.get('topic')}**?"),
        F.InputText(label="Comment", name="comment"),
        F.Checkbox(label="Approve", name="ok", option="approve", value=False),
        F.Submit("OK"),
        F.Cancel("Cancel"),
    )
