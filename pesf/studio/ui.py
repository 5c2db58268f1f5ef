"""The page of PESF Studio (Vuetify 3): volume bar, organ and training panels, the four views, messages.

Elements the end-to-end tests and users' scripts find carry stable ``id`` attributes (``pesf-...``).
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

__all__ = ["build_ui"]

_STATUS_COLORS = "{pending: 'grey', accepted: 'green', rejected: 'red'}"


def _volume_bar(studio) -> None:
    with v3.VAppBar(density="compact", elevation=1):
        v3.VAppBarTitle("PESF Studio", classes="flex-grow-0 mr-4", style="min-width: 130px")
        v3.VTextField(
            v_model=("studio_path", ""),
            id="pesf-volume-path",
            label="Volume file or DICOM folder",
            density="compact",
            hide_details=True,
            variant="outlined",
            clearable=True,
            style="max-width: 560px",
            keyup_enter=(studio.on_load_volume, "[studio_path]"),
            __events=[("keyup_enter", "keyup.enter")],
        )
        v3.VBtn(
            "Load",
            id="pesf-load",
            click=(studio.on_load_volume, "[studio_path]"),
            disabled=("studio_loading",),
            prepend_icon="mdi-folder-open",
            classes="ml-2",
            variant="tonal",
        )
        v3.VSpacer()
        html.Span("{{ seg_busy_text }}", id="pesf-busy", classes="text-caption mr-3 text-primary")
        html.Span("{{ studio_volume_name }}", id="pesf-volume-name", classes="text-caption mr-3")
        html.Span("model {{ seg_model || '…' }}", id="pesf-model", classes="text-caption mr-3")
        v3.VProgressLinear(
            indeterminate=True,
            active=("studio_loading || seg_busy",),
            absolute=True,
            location="bottom",
            color="primary",
        )


def _organ_panel(studio) -> None:
    with v3.VRow(dense=True, classes="align-center"):
        with v3.VCol(cols=8):
            v3.VCombobox(
                v_model=("seg_new_organ", ""),
                items=("seg_organ_names", []),
                id="pesf-organ-input",
                label="Organ",
                density="compact",
                hide_details=True,
            )
        with v3.VCol(cols=4):
            v3.VBtn(
                "Add",
                id="pesf-add-organ",
                click=(studio.on_add_organ, "[seg_new_organ]"),
                block=True,
                variant="tonal",
            )
    with html.Div(classes="d-flex align-center mt-2"):
        with v3.VBtnToggle(v_model=("seg_positive", True), mandatory=True, density="compact", divided=True):
            v3.VBtn("+", value=True, id="pesf-positive", size="small", title="positive points")
            v3.VBtn("−", value=False, id="pesf-negative", size="small", title="negative points")
        v3.VSwitch(
            v_model=("seg_place", True),
            label="click places points",
            density="compact",
            hide_details=True,
            classes="ml-3",
            color="primary",
        )
        v3.VBtn(
            icon="mdi-undo", id="pesf-undo", click=studio.on_undo, size="small", variant="text", title="Undo"
        )
    html.Div("Ctrl+click inverts the polarity; drag to change window/level.", classes="text-caption mb-1")
    with v3.VTable(density="compact", id="pesf-organ-table", hover=True, classes="text-body-2"):
        with html.Thead(), html.Tr():
            for header in ("Organ", "Status", "Conf.", "ml", ""):
                html.Th(header, classes="px-1")
        with html.Tbody():
            with html.Tr(
                v_for="organ in seg_organs",
                key="organ.name",
                id=("'pesf-organ-' + organ.name",),
                click=(studio.on_select_organ, "[organ.name]"),
                style=("organ.name === seg_selected ? 'background: rgba(33,150,243,0.18)' : ''",),
            ):
                with html.Td(classes="px-1"):
                    html.Span(
                        style=(
                            "`display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px;"
                            "background:${organ.color}`",
                        )
                    )
                    html.Span("{{ organ.label }}")
                with html.Td(classes="px-1"):
                    v3.VChip(
                        "{{ organ.status }}",
                        size="x-small",
                        color=(f"{_STATUS_COLORS}[organ.status]",),
                        id=("'pesf-status-' + organ.name",),
                    )
                html.Td(
                    "{{ organ.confidence === null ? '…' : organ.confidence.toFixed(2) }}",
                    classes="px-1",
                    id=("'pesf-confidence-' + organ.name",),
                )
                html.Td("{{ organ.volume_ml.toFixed(0) }}", classes="px-1")
                with html.Td(classes="px-0", style="white-space: nowrap"):
                    v3.VBtn(
                        icon="mdi-check",
                        size="x-small",
                        variant="text",
                        color="green",
                        id=("'pesf-accept-' + organ.name",),
                        click=(studio.on_accept, "[organ.name]"),
                        title="Accept",
                    )
                    v3.VBtn(
                        icon="mdi-close",
                        size="x-small",
                        variant="text",
                        color="red",
                        id=("'pesf-reject-' + organ.name",),
                        click=(studio.on_reject, "[organ.name]"),
                        title="Reject",
                    )
    with v3.VRow(dense=True, classes="align-center mt-2"):
        with v3.VCol(cols=7):
            v3.VSlider(
                v_model=("seg_threshold", 0.9),
                min=0,
                max=1,
                step=0.05,
                label="threshold",
                density="compact",
                hide_details=True,
                thumb_label=True,
            )
        with v3.VCol(cols=5):
            v3.VBtn(
                "Accept ≥",
                id="pesf-accept-above",
                click=(studio.on_accept_above, "[seg_threshold]"),
                size="small",
                block=True,
            )
    v3.VDivider(classes="my-2")
    with v3.VRow(dense=True, classes="align-center"):
        v3.VSwitch(
            v_model=("seg_confidence_visible", True),
            label="confidence map",
            id="pesf-confidence",
            density="compact",
            hide_details=True,
            color="orange",
        )
        v3.VSwitch(
            v_model=("seg_surfaces", True),
            label="3D surfaces",
            density="compact",
            hide_details=True,
            classes="ml-3",
            color="primary",
        )
    v3.VSlider(
        v_model=("seg_confidence_opacity", 0.5),
        min=0,
        max=1,
        step=0.05,
        label="opacity",
        density="compact",
        hide_details=True,
        disabled=("!seg_confidence_visible",),
    )
    v3.VDivider(classes="my-2")
    with v3.VRow(dense=True, classes="align-center"):
        with v3.VCol(cols=7):
            v3.VSelect(
                v_model=("seg_export_format", None),
                items=("seg_export_formats", []),
                density="compact",
                hide_details=True,
                label="Export accepted organs as",
            )
        with v3.VCol(cols=5):
            v3.VBtn("Export", id="pesf-export", click=studio.on_export, block=True, prepend_icon="mdi-export")
    html.A(
        "Download {{ seg_export_name }}",
        v_if="seg_export_url",
        href=("seg_export_url",),
        download=("seg_export_name",),
        id="pesf-download",
        classes="text-body-2",
    )
    with v3.VRow(dense=True, classes="align-center mt-2"):
        with v3.VCol(cols=7):
            v3.VTextField(
                v_model=("seg_case_id", ""),
                label="Case id (default: volume name)",
                density="compact",
                hide_details=True,
            )
        with v3.VCol(cols=5):
            v3.VBtn(
                "Send to training",
                id="pesf-send",
                click=(studio.on_send_to_training, "[train_workspace, seg_case_id, seg_overwrite]"),
                size="small",
                block=True,
            )
    v3.VCheckbox(
        v_model=("seg_overwrite", False),
        label="replace a case of that id",
        density="compact",
        hide_details=True,
    )


def _train_panel(studio) -> None:
    v3.VTextField(
        v_model=("train_workspace", ""),
        id="pesf-workspace",
        label="Workspace folder",
        density="compact",
        hide_details=True,
        append_inner_icon="mdi-folder-check",
        click_append_inner=(studio.on_set_workspace, "[train_workspace]"),
        keyup_enter=(studio.on_set_workspace, "[train_workspace]"),
        __events=[("keyup_enter", "keyup.enter"), ("click_append_inner", "click:appendInner")],
    )
    html.Div("{{ train_cases }} case(s) in the workspace", classes="text-caption my-1")
    with v3.VRow(dense=True, classes="align-center"):
        with v3.VCol(cols=5):
            v3.VTextField(
                v_model_number=("train_max_steps", None),
                type="number",
                label="max steps",
                density="compact",
                hide_details=True,
            )
        with v3.VCol(cols=7):
            v3.VBtn(
                "Start",
                id="pesf-train-start",
                click=(studio.on_start_training, "[train_workspace, train_max_steps]"),
                disabled=("train_active",),
                color="primary",
                size="small",
                classes="mr-2",
            )
            v3.VBtn(
                "Stop",
                id="pesf-train-stop",
                click=studio.on_stop_training,
                disabled=("!train_active",),
                size="small",
            )
    with v3.VProgressLinear(
        model_value=("train_progress", 0),
        id="pesf-train-progress",
        height=14,
        color="primary",
        classes="mt-2",
    ):
        html.Span("{{ train_progress }} %", classes="text-caption")
    html.Div("{{ train_summary }}", id="pesf-train-summary", classes="text-caption mt-1")
    html.Div("ETA {{ train_eta }}", v_if="train_eta", classes="text-caption")
    html.Div(v_html=("train_loss_svg",), classes="mt-2")
    html.Div(v_html=("train_dice_svg",))
    with v3.VTable(density="compact", id="pesf-versions"):
        with html.Thead(), html.Tr():
            for header in ("Version", "Step", "Loss", "Dice 1st", "Dice last", ""):
                html.Th(header)
        with html.Tbody(), html.Tr(v_for="v in train_versions", key="v.version"):
            html.Td("{{ v.version }}{{ v.active ? ' ✔' : '' }}")
            html.Td("{{ v.step }}")
            html.Td("{{ v.loss }}")
            html.Td("{{ v.dice_first }}")
            html.Td("{{ v.dice_last }}")
            with html.Td():
                v3.VBtn(
                    "use",
                    size="x-small",
                    variant="tonal",
                    disabled=("v.active",),
                    click=(studio.on_use_version, "[v.version]"),
                    id=("'pesf-use-' + v.version",),
                )


def build_ui(studio):
    """Build the page of ``studio`` (a :class:`~pesf.studio.app.StudioApp`); returns the layout."""
    with VAppLayout(studio.server, fill_height=True) as layout:
        layout.root.theme = "dark"
        _volume_bar(studio)
        with v3.VNavigationDrawer(permanent=True, width=450, location="left"):
            with v3.VTabs(v_model=("studio_tab", "segment"), density="compact", grow=True):
                v3.VTab("Organs", value="segment", id="pesf-tab-segment")
                v3.VTab("Training", value="train", id="pesf-tab-train")
            with v3.VWindow(v_model=("studio_tab",), classes="pa-3"):
                with v3.VWindowItem(value="segment"):
                    _organ_panel(studio)
                with v3.VWindowItem(value="train"):
                    _train_panel(studio)
            v3.VAlert(
                "{{ studio_error }}",
                v_if="studio_error",
                type="error",
                density="compact",
                closable=True,
                id="pesf-error",
                classes="ma-2",
                click_close="studio_error = ''",
            )
        with v3.VMain(), html.Div(style="height: calc(100vh - 48px); display: flex;", id="pesf-views"):
            studio.scene.layout_manager.initialize_layout_grid(layout)
        with v3.VSnackbar(
            v_model=("studio_snackbar", False),
            timeout=6000,
            color=("studio_message_error ? 'error' : 'surface-variant'",),
            location="bottom",
        ):
            html.Span("{{ studio_message }}", id="pesf-message")
    return layout
