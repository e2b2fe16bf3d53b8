from tests.conftest import login


def test_dashboard_after_sign_in(client, make_user, make_transaction):
    user = make_user(role="viewer")
    make_transaction(org=user.organization, transaction_ref="TXN-SMOKE", amount=5000, currency="jpy")
    assert login(client, user).status_code == 302
    page = client.get("/transactions").get_data(as_text=True)
    assert "TXN-SMOKE" in page
    assert "¥5,000" in page
