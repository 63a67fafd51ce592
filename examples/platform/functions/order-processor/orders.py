"""Accepts an order and prices it."""


def handler(event, context):
    items = event.get("items", [])
    total = sum(item.get("price", 0) * item.get("quantity", 1) for item in items)
    return {
        "orderId": event.get("orderId"),
        "status": "accepted",
        "total": round(total, 2),
        "requestId": context.request_id,
    }
