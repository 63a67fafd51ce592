"""Computes the size of an image scaled to fit a bounding box, keeping its aspect ratio."""


def handler(event, context):
    width, height = event["width"], event["height"]
    box = event.get("maxSide", 256)
    scale = min(1.0, box / max(width, height))
    return {"statusCode": 200, "body": {"width": round(width * scale), "height": round(height * scale)}}
