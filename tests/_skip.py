"""pytest.skip that also prints its reason under -q: CI logs must say what went untested."""

import pytest


def skip_loudly(request, reason):
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{request.node.nodeid}: skipped: {reason}")
    pytest.skip(reason)
