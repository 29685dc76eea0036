"""``movinet-service`` refuses a configuration it cannot run, with one clear line and exit status 2."""

from __future__ import annotations

import pytest

from service.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker"], "set MOVINET_REDIS_URL"),
        (["gateway"], "set MOVINET_REDIS_URL"),
        (["serve", "--device", "tpu"], "is not a torch device"),
        (["serve", "--device", "cuda:99"], "torch sees no such CUDA device"),
    ],
)
def test_unrunnable_configurations_exit_2_with_the_reason(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
