"""`POST /notifications`: light work with FastAPI BackgroundTasks, after the response."""

import pytest
from starlette.testclient import TestClient

from {{ cookiecutter.package_name }} import notify
from tests.support import LogCapture

NOTIFICATION = {"email": "ada@example.com", "message": "Your report is ready."}


def test_tasks_from_a_dependency_and_the_endpoint_both_run(
    client: TestClient, logs: LogCapture
) -> None:
    """The audit dependency and the endpoint each add a task to the one BackgroundTasks
    object FastAPI shares between them; both run, dependency first, after the response."""
    response = client.post("/notifications", json=NOTIFICATION)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    request_id = response.headers["x-request-id"]
    messages = logs.messages(request_id)
    audit = messages.index("audit: POST /notifications accepted")
    sent = messages.index("notification sent to a***@example.com (21 characters)")
    access = next(i for i, m in enumerate(messages) if m.startswith("POST /notifications 202"))
    assert access < audit < sent


def test_a_failing_notification_is_logged_and_never_reaches_the_client(
    client: TestClient, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_transport(email: str, message: str) -> None:
        raise ConnectionError("mail server down")

    monkeypatch.setattr(notify, "send_notification", broken_transport)
    response = client.post("/notifications", json=NOTIFICATION)
    assert response.status_code == 202
    (failure,) = [r for r in logs.records() if r["message"].startswith("notification to")]
    assert failure["message"] == "notification to a***@example.com failed"
    assert failure["request_id"] == response.headers["x-request-id"]
    assert "ConnectionError: mail server down" in failure["exception"]


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-address", "message": "hi"},
        {"email": "ada@example.com", "message": ""},
        {"email": "ada@example.com"},
        {"email": "ada@example.com", "message": "x" * 5001},
    ],
    ids=["bad-email", "empty-message", "no-message", "message-too-long"],
)
def test_bad_input_is_a_422_with_json(client: TestClient, body: dict[str, str]) -> None:
    response = client.post("/notifications", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_malformed_json_is_a_4xx_not_a_500(client: TestClient) -> None:
    response = client.post(
        "/notifications", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
