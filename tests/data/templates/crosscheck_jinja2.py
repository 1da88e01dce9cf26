#!/usr/bin/env python3
"""Renders every case of golden.json with Python jinja2 set up as transformers does, and reports the cases where
the expected value (from @huggingface/jinja, or a Python override in make_golden.mjs) differs.

    python3 tests/data/templates/crosscheck_jinja2.py   # needs python3-jinja2 (Debian) or `pip install jinja2`

With --emit-overrides it prints the differing cases as entries for PYTHON_EXPECTED in make_golden.mjs.
"""
import json
import os
import sys
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))


def make_env():
    # transformers.utils.chat_template_utils._compile_jinja_template (AssistantTracker omitted: no case uses it)
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    emit = "--emit-overrides" in sys.argv[1:]
    env = make_env()
    with open(os.path.join(HERE, "golden.json"), encoding="utf-8") as f:
        golden = json.load(f)
    bad = 0
    for case in golden["cases"]:
        if "template" in case:
            with open(os.path.join(HERE, case["template"]), encoding="utf-8", newline="") as f:
                source = f.read()
        else:
            source = case["source"]
        try:
            got = {"expected": env.from_string(source).render(**case["context"])}
        except TemplateError as e:
            got = {"error": str(e)}
        except Exception as e:  # Python-level errors (TypeError, ...) are render errors too
            got = {"error": f"{type(e).__name__}: {e}"}
        want = {k: case[k] for k in ("expected", "error") if k in case}
        if got != want:
            bad += 1
            if emit:  # entries for PYTHON_EXPECTED in make_golden.mjs
                print(f"  {json.dumps(case['name'])}: {json.dumps(got, ensure_ascii=False)},")
            else:
                print(f"DIFF {case['name']}\n  golden: {want!r}\n  jinja2: {got!r}")
    print(f"{len(golden['cases']) - bad}/{len(golden['cases'])} cases agree with Python jinja2")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
