"""Renders an invoice as text (a stand-in for a PDF): called directly with an invoice, or by the
invoice-created event trigger with the event ({"id", "source", "time", "data": invoice})."""

import json


def handler(event, context):
    invoice = event.get("data", event) if isinstance(event, dict) else {}
    lines = [f"Invoice {invoice.get('invoiceId', '?')}"]
    lines += [f"  {name}: {amount}" for name, amount in invoice.get("lines", {}).items()]
    print(json.dumps({"rendered": invoice.get("invoiceId"), "event": event.get("id")}), flush=True)
    return {"document": "\n".join(lines), "pages": 1}
