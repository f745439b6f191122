// Front-end additions of the Muse node pack:
// - Muse CLIP Rerank lists its ranking on the node after every run ("#1  image 3  0.3120").
// - The decoding nodes show what their settings cost: transformer passes per image.
// Both are drawn text rows (not DOM widgets), so they add no form fields, are never saved into the
// workflow or sent with the prompt, and cannot disturb the node's own widgets.

import { app } from "../../../scripts/app.js";

const LINE_HEIGHT = 16;
const PADDING = 4;
const TEXT_COLOR = "#999"; // mid grey: readable on the dark and the light themes
const MAX_RANK_ROWS = 12; // a batch of 64 would make the node 1000 px tall; the scores output has them all

// A read-only widget that draws the lines `getLines()` returns, one per row.
function addTextRowsWidget(node, name, getLines) {
    const rows = () => Math.max(1, getLines().length);
    node.addCustomWidget({
        name,
        type: "muse_text_rows",
        value: "",
        serialize: false, // not in the saved workflow's widgets_values
        options: { serialize: false }, // not in the prompt sent to the server
        computeSize(width) {
            return [width ?? 0, rows() * LINE_HEIGHT + 2 * PADDING];
        },
        draw(ctx, _node, width, y, _height, lowQuality) {
            if (lowQuality) return; // zoomed out: the core widgets hide their text too
            ctx.save();
            ctx.font = "12px sans-serif";
            ctx.fillStyle = TEXT_COLOR;
            ctx.textAlign = "left";
            ctx.textBaseline = "middle";
            getLines().forEach((line, row) => {
                ctx.fillText(line, 12, y + PADDING + (row + 0.5) * LINE_HEIGHT, Math.max(0, width - 24));
            });
            ctx.restore();
        },
    });
    fitNodeToWidgets(node);
}

// Grow (never shrink) the node so that every widget, the new rows included, fits.
function fitNodeToWidgets(node) {
    const [neededWidth, neededHeight] = node.computeSize();
    if (node.size[0] < neededWidth || node.size[1] < neededHeight) {
        node.setSize([Math.max(node.size[0], neededWidth), Math.max(node.size[1], neededHeight)]);
    }
    node.setDirtyCanvas?.(true, true);
}

// One line per ranked image, from the two lists nodes/rerank.py sends (both best first).
function rankingLines(scores, order) {
    const count = Math.min(scores.length, order.length);
    const lines = [];
    for (let rank = 0; rank < Math.min(count, MAX_RANK_ROWS); rank++) {
        const score = Number(scores[rank]);
        lines.push(`#${rank + 1}  image ${order[rank]}  ${Number.isFinite(score) ? score.toFixed(4) : "?"}`);
    }
    if (count > MAX_RANK_ROWS) {
        lines.push(`… ${count - MAX_RANK_ROWS} more in the scores output`);
    }
    return lines;
}

function addRankingDisplay(nodeType) {
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        // Rankings are not saved: after loading a workflow the list is empty until the next run.
        this.museRankingLines = [];
        addTextRowsWidget(this, "muse_ranking", () =>
            this.museRankingLines.length ? this.museRankingLines : ["scores appear here after a run"]);
        return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        // A cached node may report no UI data: keep the ranking already shown.
        if (!Array.isArray(message?.muse_scores) || !Array.isArray(message?.muse_order)) return;
        this.museRankingLines = rankingLines(message.muse_scores, message.muse_order);
        fitNodeToWidgets(this);
    };
}

function widgetValue(node, name) {
    return node.widgets?.find((widget) => widget.name === name)?.value;
}

// Python's round() (half to even), which the sampler uses to turn strength into a step count.
function roundHalfToEven(x) {
    const floor = Math.floor(x);
    if (x - floor !== 0.5) return Math.round(x);
    return floor % 2 === 0 ? floor : floor + 1;
}

// What each decoding node repeats per image and how many times, from its widgets (not a finite
// number when a widget is missing).
const DECODING_NODES = {
    MuseSampler: {
        unit: "steps",
        count(node) {
            const steps = widgetValue(node, "steps");
            const isImg2Img = node.inputs?.find((input) => input.name === "tokens")?.link != null;
            // img2img runs only the last round(steps * strength) steps of the schedule.
            return isImg2Img ? roundHalfToEven(steps * widgetValue(node, "strength")) : steps;
        },
    },
    MuseSuperResSampler: { unit: "steps", count: (node) => widgetValue(node, "steps") },
    MuseInpaint: { unit: "steps", count: (node) => widgetValue(node, "steps") },
    MuseOutpaint: { unit: "steps", count: (node) => widgetValue(node, "steps") },
    MuseMaskFreeEdit: { unit: "iterations", count: (node) => widgetValue(node, "iterations") },
};

// With guidance > 1 every step runs the transformer on the prompt and on the negative (or empty)
// prompt, so a step costs two passes; at <= 1 guidance is off and a step costs one.
// With sampling_from "model" the steps (iterations) and guidance come from the model's sampling.json,
// which the front end cannot see, so no count is shown.
function costLines(node, { unit, count }) {
    if (widgetValue(node, "sampling_from") === "model") {
        return [`${unit} and guidance: the model's recommended settings`];
    }
    const repeats = count(node);
    const guidance = widgetValue(node, "guidance");
    if (!Number.isFinite(repeats) || !Number.isFinite(guidance)) return [];
    const guided = guidance > 1;
    const detail = guided ? `${repeats} ${unit} × 2 for guidance` : `${repeats} ${unit}, guidance off`;
    return [`${repeats * (guided ? 2 : 1)} passes per image (${detail})`];
}

function addCostDisplay(nodeType, decoding) {
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        addTextRowsWidget(this, "muse_cost", () => costLines(this, decoding));
        return result;
    };
}

app.registerExtension({
    name: "muse.nodes",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name === "MuseCLIPRerank") {
            addRankingDisplay(nodeType);
        } else if (Object.hasOwn(DECODING_NODES, nodeData.name)) {
            addCostDisplay(nodeType, DECODING_NODES[nodeData.name]);
        }
    },
});
