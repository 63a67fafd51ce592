def handle(event, context):
    return {"order": event.get("id"), "status": "processed"}
