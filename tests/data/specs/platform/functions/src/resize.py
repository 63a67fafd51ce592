def handler(event, context):
    return {"resized": event.get("path")}
