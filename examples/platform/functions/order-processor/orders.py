"""Prices orders: called directly with one order, or by orders-queue's trigger with a batch.

From the queue each record's body is an order (JSON). An order that is not one (a poison
message) is reported in batchItemFailures, so it is retried alone and, after the queue's
maxReceives, dead-lettered; the rest of its batch is acknowledged. Each processed order is
printed as one JSON line: the function's logs are its results.
"""

import json
import os
import time


def price(order):
    items = order.get("items", [])
    total = sum(item.get("price", 0) * item.get("quantity", 1) for item in items)
    return {"orderId": order.get("orderId"), "status": "accepted", "total": round(total, 2)}


def handler(event, context):
    if not (isinstance(event, dict) and "Records" in event):
        return dict(price(event), requestId=context.request_id)
    orders, failures = [], []
    for record in event["Records"]:
        try:
            order = json.loads(record["body"])
            if not isinstance(order, dict) or "orderId" not in order:
                raise ValueError("not an order")
        except ValueError:
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        # Test hooks: crash (the whole batch comes back) on an order's first delivery.
        first = record["attributes"]["ApproximateReceiveCount"] == "1"
        if order.get("crashOnFirstDelivery") and first:
            os._exit(3)
        orders.append(order)
    for order in orders:
        time.sleep(float(order.get("delaySeconds", 0)))  # a test hook: a slow order
        print(json.dumps({"processed": price(order)}), flush=True)
    return {"batchItemFailures": failures}
