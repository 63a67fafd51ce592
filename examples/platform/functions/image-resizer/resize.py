"""Computes the size of an image scaled to fit a bounding box, keeping its aspect ratio.

Called directly (`blixard function invoke`) the event is the request itself; through the HTTP
trigger it is the HTTP request (method, path, headers, query, body) and the request is its body.
"""
import json


def handler(event, context):
    if "method" in event and "body" in event:
        event = json.loads(event["body"] or "{}")
    width, height = event["width"], event["height"]
    box = event.get("maxSide", 256)
    scale = min(1.0, box / max(width, height))
    return {"statusCode": 200, "body": {"width": round(width * scale), "height": round(height * scale)}}
