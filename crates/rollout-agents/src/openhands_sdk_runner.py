"""rollout's runner for the OpenHands agent SDK (`-a openhands-sdk`).

Runs one OpenHands agent (terminal and file-editor tools) on the task's instruction in the
working directory, to completion, unattended. Every event of the conversation is printed to
stdout as one JSON line as it happens (rollout reads them back for usage, failures and the
trajectory), then one last line {"kind": "rollout.result", ...} with the final status, the
error (if any) and the accumulated metrics. The SDK's own record of the conversation is kept
under --log-dir.

Model: --model, else LLM_MODEL (a litellm name such as openai/gpt-4o or anthropic/claude-...).
Key: LLM_API_KEY, else the provider's own variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).
Base URL: LLM_BASE_URL, else OPENAI_BASE_URL for openai/ models.
Exit status: 0 finished, 2 the provider refused the credentials, 3 stopped unfinished (for
example at the iteration limit), 1 any other failure.
"""
import argparse
import json
import os
import sys
import time
import traceback

# litellm would fetch its model price list from the internet at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")

from openhands.sdk import LLM, Agent, Conversation  # noqa: E402
from openhands.sdk.conversation.exceptions import ConversationRunError  # noqa: E402
from openhands.sdk.llm.exceptions import LLMAuthenticationError, LLMError  # noqa: E402
from openhands.sdk.tool import Tool  # noqa: E402
from openhands.tools.file_editor import FileEditorTool  # noqa: E402
from openhands.tools.terminal import TerminalTool  # noqa: E402

OUT = sys.stdout


def emit(obj):
    OUT.write(json.dumps(obj, default=str) + "\n")
    OUT.flush()


def dump(event):
    try:
        return event.model_dump(mode="json")
    except Exception as e:  # a log line is better than none
        return {"kind": type(event).__name__, "dump_error": repr(e)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruction", required=True)
    ap.add_argument("--model", default=os.environ.get("LLM_MODEL"))
    ap.add_argument("--workdir", default=os.getcwd())
    ap.add_argument("--log-dir", default="/logs/agent/openhands-sdk")
    ap.add_argument("--max-iterations", type=int,
                    default=int(os.environ.get("ROLLOUT_MAX_ITERATIONS", "100")))
    args = ap.parse_args()
    if not args.model:
        print("rollout: openhands-sdk needs a model: -m PROVIDER/MODEL or LLM_MODEL", file=sys.stderr)
        return 1

    kwargs = {"model": args.model, "usage_id": "agent", "num_retries": 3,
              "retry_min_wait": 1, "retry_max_wait": 8}
    if os.environ.get("LLM_API_KEY"):
        kwargs["api_key"] = os.environ["LLM_API_KEY"]
    base_url = os.environ.get("LLM_BASE_URL")
    if not base_url and args.model.startswith("openai/"):
        base_url = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
    if base_url:
        kwargs["base_url"] = base_url
    llm = LLM(**kwargs)
    agent = Agent(llm=llm, tools=[Tool(name=TerminalTool.name), Tool(name=FileEditorTool.name)])
    os.makedirs(args.log_dir, exist_ok=True)
    conversation = Conversation(
        agent=agent,
        workspace=args.workdir,
        persistence_dir=args.log_dir,
        callbacks=[lambda event: emit(dump(event))],
        max_iteration_per_run=args.max_iterations,
        visualizer=None,
        delete_on_close=False,
    )
    started = time.time()
    error, code = None, 0
    try:
        conversation.send_message(args.instruction)
        conversation.run()
    except Exception as e:
        cause = e.original_exception if isinstance(e, ConversationRunError) and e.original_exception else e
        error = {"type": type(cause).__name__, "message": str(cause)}
        if not isinstance(cause, LLMError):  # a provider failure needs no traceback
            error["traceback"] = traceback.format_exc()
        code = 2 if isinstance(cause, LLMAuthenticationError) else 1
    status = getattr(conversation.state.execution_status, "value",
                     str(conversation.state.execution_status))
    if code == 0 and status != "finished":
        code = 3
    try:
        metrics = conversation.conversation_stats.get_combined_metrics().model_dump(mode="json")
    except Exception as e:
        metrics = {"error": repr(e)}
    emit({"kind": "rollout.result", "execution_status": status, "error": error,
          "seconds": round(time.time() - started, 3), "model": args.model, "metrics": metrics})
    try:
        conversation.close()
    except Exception:
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
