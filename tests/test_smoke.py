def test_push_pop_ack(client):
    assert client.execute_command("VALQ", "CREATE", "q") == b"created q"
    assert client.execute_command("VALQ", "PUSH", "q", "m1") == b"1"
    reply = client.execute_command("VALQ", "POP", "q")
    if isinstance(reply, dict):
        assert reply == {b"body": b"m1", b"id": b"1"}
    else:
        assert reply == [b"body", b"m1", b"id", b"1"]
    assert client.execute_command("VALQ", "ACK", "q", "1") == b"ack 1"


def test_lease_expiry_with_manual_clock(timed_server):
    c = timed_server.client()
    c.execute_command("VALQ", "CREATE", "q", "10")
    c.execute_command("VALQ", "PUSH", "q", "m")
    assert c.execute_command("VALQ", "POP", "q") == [b"body", b"m", b"id", b"1"]
    assert c.execute_command("VALQ", "POP", "q") == b""
    timed_server.advance(10)
    assert c.execute_command("VALQ", "POP", "q") == [b"body", b"m", b"id", b"1"]
