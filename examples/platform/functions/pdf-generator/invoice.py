"""Renders an invoice as text (a stand-in for a PDF)."""


def handler(event, context):
    lines = [f"Invoice {event.get('invoiceId', '?')}"]
    lines += [f"  {name}: {amount}" for name, amount in event.get("lines", {}).items()]
    return {"document": "\n".join(lines), "pages": 1}
