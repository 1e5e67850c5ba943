"""pytest plugin for kms_pykmip_suite.rs: one JSON line per test of PyKMIP's integration suite
with its outcome and every Result Reason the server answered while it ran (read from the
response messages the client decoded), to ATREST_SUITE_REPORT."""

import json
import os

from kmip.core.messages import messages

_out = None
_reasons = []
_original_read = messages.ResponseMessage.read


def _read(self, *args, **kwargs):
    _original_read(self, *args, **kwargs)
    for item in self.batch_items or []:
        reason = getattr(item, "result_reason", None)
        if reason is not None and reason.value is not None:
            _reasons.append(reason.value.name)


messages.ResponseMessage.read = _read


def pytest_configure(config):
    global _out
    _out = open(os.environ["ATREST_SUITE_REPORT"], "w")


def pytest_runtest_setup(item):
    del _reasons[:]


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    lines = (report.longreprtext or "").strip().splitlines()
    _out.write(json.dumps({
        "test": report.nodeid.split("::", 1)[-1] if "::" in report.nodeid else report.nodeid,
        "file": report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1],
        "outcome": report.outcome,
        "reasons": list(_reasons),
        "error": lines[-1] if lines else "",
    }) + "\n")
    _out.flush()
