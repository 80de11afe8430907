"""The app's MQTT routes: `{name}` matches one topic level and is passed to the handler by name."""
from app.controllers.device_controller import DeviceController
from app.middleware.log_timing import log_timing, require_json_object
from core.router import Router

router = Router()

router.on("devices/{device_id}/status", DeviceController.status, qos=1)   # dispatches ProcessDataJob
router.on("devices/{device_id}/ping", DeviceController.ping)              # replies on devices/{device_id}/pong
router.on("devices/{device_id}/summary", DeviceController.summary, qos=1)  # a job replies on .../summary/reply
router.on("sensors/{sensor_id}/data", DeviceController.data, qos=1, shared=True)   # $share/<group>/sensors/+/data

with router.group(prefix="fleet", middleware=[log_timing, require_json_object]) as fleet:
    fleet.on("{truck_id}/gps", DeviceController.gps)
