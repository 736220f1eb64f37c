"""The shared-memory profile carries camera-sized images between processes without loss."""
import textwrap

# Publishes N 640x480 rgb8 images (921,648 B) best effort at 30 Hz once a subscriber matched.
IMAGE_PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    def main(count):
        rclpy.init(args=sys.argv)
        node = rclpy.create_node("image_publisher")
        publisher = node.create_publisher(Image, "image", qos_profile_sensor_data)
        try:
            while publisher.get_subscription_count() < 1:
                time.sleep(0.01)
            pixels = np.zeros((480, 640, 3), np.uint8)
            for i in range(count):
                pixels[0, 0, 0] = i
                msg = Image(height=480, width=640, encoding="rgb8", step=1920)
                msg.header.frame_id = str(i)
                msg.data = pixels.tobytes()
                publisher.publish(msg)
                time.sleep(1 / 30)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
            rclpy.try_shutdown()

    main(int(sys.argv[1]))
""")


def test_vga_images_arrive_best_effort_across_processes(ros, tmp_path):
    import sys

    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    count = 60
    script = tmp_path / "image_publisher.py"
    script.write_text(IMAGE_PUBLISHER)
    inbox = ros.collect(Image, "/image", qos_profile_sensor_data)
    process = ros.start([sys.executable, str(script), str(count)])
    ros.spin_until(lambda: not process.running(), timeout_s=30, what="publisher done")
    assert process.wait() == 0, process.output()
    ros.spin_for(0.5)  # drain what is still queued
    # Default Fast DDS shared memory (512 KiB segments) delivers ~10 % of these images best
    # effort; the 16 MiB segments of fastdds_shm_only.xml deliver all of them on an idle machine
    # (the margin is for a loaded 2-core CI machine, where the receiving executor can fall behind
    # its keep-last queue).
    assert len(inbox.messages) >= 0.75 * count, f"{len(inbox.messages)} of {count} images"
    assert all(len(m.data) == 640 * 480 * 3 for m in inbox.messages)
