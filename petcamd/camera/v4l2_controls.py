"""The few V4L2 ioctl numbers petcamd needs (<linux/videodev2.h>, <linux/v4l2-controls.h>).

The same values picamera2 takes from the `videodev2` module.
"""

from __future__ import annotations

V4L2_CTRL_CLASS_CODEC = 0x00990000  # called V4L2_CTRL_CLASS_MPEG before Linux 5.11
V4L2_CID_MPEG_BASE = V4L2_CTRL_CLASS_CODEC | 0x900
V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME = V4L2_CID_MPEG_BASE + 229
VIDIOC_S_CTRL = 0xC008561C  # _IOWR('V', 28, struct v4l2_control { __u32 id; __s32 value; })
