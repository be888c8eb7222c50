def test_health_reports_both_parts_connected(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["redis"] == "connected" and body["postgres"] == "connected"
