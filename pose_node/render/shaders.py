"""GLSL of the renderer and the vertex layouts that feed it.

Variants are compiled from the same source with ``#define``s:
- ``COLOR_TARGET``: 0 none, 1 RGBA8 (lit rgb + instance / 255 in alpha), 2 R8 (instance only);
- ``GEOM_TARGET``: 0 none, 1 R32F (metric depth), 2 RGBA32F (object xyz + metric depth);
- ``GEOM_LOCATION``: the colour attachment of the geometry target.
"""
VERTEX_FORMAT = "3f 3f 2f 4f1"  # position, normal, uv, colour (normalized uint8 RGBA)
VERTEX_ATTRIBUTES = ("in_position", "in_normal", "in_uv", "in_color")
INSTANCE_FORMAT = "4f 4f 4f 4f 4f 4f/i"
INSTANCE_ATTRIBUTES = ("in_cam_x", "in_cam_y", "in_cam_z", "in_proj_a", "in_proj_b", "in_light")
INSTANCE_FLOATS = 24

VERTEX_SHADER = """
in vec3 in_position;   // object frame, metres
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_color;
in vec4 in_cam_x;      // rows of T_camera_object (one instance per view)
in vec4 in_cam_y;
in vec4 in_cam_z;
in vec4 in_proj_a;     // P00 P01 P02 P11 of opengl_projection_from_K
in vec4 in_proj_b;     // P12 P22 P23, diffuse
in vec4 in_light;      // unit direction the light travels (camera frame), ambient
uniform float u_tiles; // views stacked vertically in the framebuffer

out vec3 v_xyz;
out vec3 v_pos_cam;
out vec3 v_normal_cam;
out vec2 v_uv;
out vec4 v_color;
flat out vec4 v_light;
flat out float v_diffuse;

void main() {
    vec4 p = vec4(in_position, 1.0);
    vec3 pc = vec3(dot(in_cam_x, p), dot(in_cam_y, p), dot(in_cam_z, p));
    vec4 clip = vec4(in_proj_a.x * pc.x + in_proj_a.y * pc.y + in_proj_a.z * pc.z,
                     in_proj_a.w * pc.y + in_proj_b.x * pc.z,
                     in_proj_b.y * pc.z + in_proj_b.z,
                     pc.z);
    // Keep the view inside its own rows, then move it there.
    gl_ClipDistance[0] = clip.w + clip.y;
    gl_ClipDistance[1] = clip.w - clip.y;
    float row = float(gl_InstanceID);
    gl_Position = vec4(clip.x, (clip.y + clip.w * (1.0 + 2.0 * row - u_tiles)) / u_tiles, clip.z, clip.w);
    v_xyz = in_position;
    v_pos_cam = pc;
    v_normal_cam = vec3(dot(in_cam_x.xyz, in_normal), dot(in_cam_y.xyz, in_normal), dot(in_cam_z.xyz, in_normal));
    v_uv = in_uv;
    v_color = in_color;
    v_light = in_light;
    v_diffuse = in_proj_b.w;
}
"""

FRAGMENT_SHADER = """
in vec3 v_xyz;
in vec3 v_pos_cam;
in vec3 v_normal_cam;
in vec2 v_uv;
in vec4 v_color;
flat in vec4 v_light;
flat in float v_diffuse;
uniform sampler2D u_texture;
uniform bool u_textured;
uniform float u_instance;  // (index + 1) / 255

#if COLOR_TARGET
layout(location = 0) out vec4 out_color;
#endif
#if GEOM_TARGET
layout(location = GEOM_LOCATION) out vec4 out_geom;
#endif

void main() {
#if COLOR_TARGET == 1
    vec3 albedo = u_textured ? texture(u_texture, v_uv).rgb : v_color.rgb;
    float len = length(v_normal_cam);
    vec3 n = len > 1e-12 ? v_normal_cam / len : -normalize(v_pos_cam);
    if (dot(n, v_pos_cam) > 0.0) n = -n;  // two-sided: light the side the camera sees
    float shade = v_light.w + v_diffuse * max(dot(n, -v_light.xyz), 0.0);
    out_color = vec4(clamp(albedo * shade, 0.0, 1.0), u_instance);
#elif COLOR_TARGET == 2
    out_color = vec4(u_instance, 0.0, 0.0, 0.0);
#endif
#if GEOM_TARGET == 1
    out_geom = vec4(v_pos_cam.z, 0.0, 0.0, 0.0);
#elif GEOM_TARGET == 2
    out_geom = vec4(v_xyz, v_pos_cam.z);
#endif
}
"""
