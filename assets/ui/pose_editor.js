// FineControl pose editor: the body of gr.HTML's js_on_load (given: element, trigger, props, watch).
// The component's value is the scene (OpenPose JSON plus prompts). Every edit commits a new object
// with `props.value = ...`; values pushed from Python arrive through watch('value').
// The BODY-18 and scene constants come from Python (finecontrol/ui/editor.py, editor_props).
'use strict';

const NUM_KEYPOINTS = props.num_keypoints;
const LIMBS = props.limbs;
const LEFT_RIGHT_PAIRS = props.left_right_pairs;
const TEMPLATES = props.templates;
const COLORS = props.colors;
const DEFAULT_CANVAS = props.default_canvas;  // a scene's size when it has none; stroke widths are for it
const SIZES = props.sizes;
const MAX_PEOPLE = props.max_people;
const MAX_CONTROL_STRENGTH = props.max_control_strength;
const ROTATE_STEP = props.rotate_step;  // degrees per click of Rotate left / Rotate right
// A person's hands and face (OpenPose fields, flat x, y, c triples): they move with the body.
const [LEFT_HAND, RIGHT_HAND, FACE] = props.part_fields;  // in this order
const HAND_EDGES = props.hand_edges;
const FACE_LEFT_RIGHT_PAIRS = props.face_left_right_pairs;
const SCALE_STEP = 1.1;  // per click of Bigger / Smaller
const WHEEL_SCALE_STEP = 1.05;
const WHEEL_ROTATE_STEP = 5;  // degrees
const NUDGE = 2;  // canvas pixels per arrow key press (Shift: NUDGE_LARGE)
const NUDGE_LARGE = 20;
const LORA_NAMES = props.lora_names;  // the LoRAs the model has at hand (any other name or hub id can be typed)
const VOCABULARY = new Set(props.vocabulary);  // the only words the model knows; empty: any text
const WORD = new RegExp(props.word_pattern, 'gu');  // finecontrol.model_info.unknown_words's rule

const canvas = element.querySelector('.fc-canvas');
const ctx = canvas.getContext('2d');
const cards = element.querySelector('.fc-people');
const status = element.querySelector('.fc-status');
const sizeSelect = element.querySelector('.fc-size');
const templateSelect = element.querySelector('.fc-template');
const settingInput = element.querySelector('.fc-setting');
const negativeInput = element.querySelector('.fc-global-negative');

const clone = (v) => JSON.parse(JSON.stringify(v));
// the LoRA names the cards suggest, in a datalist of the page (one per editor)
const listId = `fc-lora-names-${Math.random().toString(36).slice(2)}`;
const loraList = document.createElement('datalist');
loraList.id = listId;
loraList.innerHTML = LORA_NAMES.map((name) => `<option value="${name.replace(/[&"<>]/g, '')}"></option>`).join('');
element.appendChild(loraList);
let committed = normalise(props.value, {});
let scene = clone(committed);
let selected = scene.people.length ? 0 : -1;
let drag = null;
let lastMergeKey = null;
let background = null;
const undoStack = [];
const redoStack = [];

function normalise(value, current) {
  // A value without a setting or negative prompt (a plain OpenPose file) keeps `current`'s.
  const v = (value && typeof value === 'object') ? clone(value) : {};
  v.canvas_width = v.canvas_width || DEFAULT_CANVAS;
  v.canvas_height = v.canvas_height || DEFAULT_CANVAS;
  v.people = Array.isArray(v.people) ? v.people : [];
  for (const key of ['setting', 'negative_prompt']) {
    if (typeof v[key] !== 'string') v[key] = typeof current[key] === 'string' ? current[key] : '';
  }
  return v;
}

function unknownWords(text) {
  if (!VOCABULARY.size) return [];
  return [...new Set((String(text).toLowerCase().match(WORD) || []).filter((w) => !VOCABULARY.has(w)))];
}

function wordsNote(text, emptyNote) {
  const unknown = unknownWords(text);
  if (unknown.length) return `Not words this model knows (ignored): ${unknown.join(', ')}`;
  return String(text).trim() ? '' : emptyNote;
}

// ---- scene edits (pure on a copy of `scene`) -------------------------------------------------
// A person's points [x, y, c]: the body's NUM_KEYPOINTS, then those of each hand and face field the
// person has (in props.part_fields order), so that every edit of the points carries them along.
const partsOf = (person) => [LEFT_HAND, RIGHT_HAND, FACE].filter((f) => Array.isArray(person[f]));
const points = (person) => {
  const k = [...person.pose_keypoints_2d, ...partsOf(person).flatMap((f) => person[f])];
  return Array.from({ length: Math.floor(k.length / 3) }, (_, j) => [k[3 * j], k[3 * j + 1], k[3 * j + 2]]);
};
const setPoints = (person, pts) => {
  person.pose_keypoints_2d = pts.slice(0, NUM_KEYPOINTS).flat();
  let at = NUM_KEYPOINTS;
  for (const f of partsOf(person)) {
    const n = Math.floor(person[f].length / 3);
    person[f] = pts.slice(at, at + n).flat();
    at += n;
  }
};
const bodyPoints = (person) => points(person).slice(0, NUM_KEYPOINTS);

function centre(person) {  // of the body, as Python's pose_center
  const all = bodyPoints(person);
  const shown = all.some((p) => p[2] > 0) ? all.filter((p) => p[2] > 0) : all;
  const xs = shown.map((p) => p[0]);
  const ys = shown.map((p) => p[1]);
  return [(Math.min(...xs) + Math.max(...xs)) / 2, (Math.min(...ys) + Math.max(...ys)) / 2];
}

function transform(person, fn) {
  const [cx, cy] = centre(person);
  setPoints(person, points(person).map(([x, y, c]) => { const [nx, ny] = fn(x - cx, y - cy); return [nx + cx, ny + cy, c]; }));
}

function freestX() {
  // The middle of the widest stretch of the canvas's width that no person covers.
  const w = scene.canvas_width;
  const spans = scene.people
    .map((p) => points(p).filter((q) => q[2] > 0).map((q) => Math.min(w, Math.max(0, q[0]))))
    .filter((xs) => xs.length)
    .map((xs) => [Math.min(...xs), Math.max(...xs)])
    .sort((a, b) => a[0] - b[0]);
  let best = [0, 0];
  let from = 0;
  for (const [a, b] of [...spans, [w, w]]) {
    if (a - from > best[1] - best[0]) best = [from, a];
    from = Math.max(from, b);
  }
  return (best[0] + best[1]) / 2;
}

function newPerson(template) {
  const w = scene.canvas_width;
  const h = scene.canvas_height;
  const height = h * 0.7;
  const half = Math.max(...TEMPLATES[template].map(([x]) => Math.abs(x))) * height;  // half its width
  const free = scene.people.length ? freestX() : w / 2;
  const cx = w > 2 * half ? Math.min(Math.max(free, half), w - half) : w / 2;  // wholly on the canvas
  const feet = h * 0.95;
  const pts = TEMPLATES[template].map(([x, y]) => [cx + x * height, feet + y * height, 1]);
  return { pose_keypoints_2d: pts.flat(), prompt: '' };
}

function say(text) { status.dataset.message = text || ''; refreshStatus(); }

const actions = {
  add() {
    if (scene.people.length >= MAX_PEOPLE) return say(`At most ${MAX_PEOPLE} people.`);
    scene.people.push(newPerson(templateSelect.value));
    selected = scene.people.length - 1;
    commit();
  },
  duplicate() {
    if (selected < 0) return say('Select a person first (click a skeleton).');
    if (scene.people.length >= MAX_PEOPLE) return say(`At most ${MAX_PEOPLE} people.`);
    const copy = clone(scene.people[selected]);
    const shift = scene.canvas_width * 0.06;
    setPoints(copy, points(copy).map(([x, y, c]) => [x + shift, y, c]));
    scene.people.push(copy);
    selected = scene.people.length - 1;
    commit();
  },
  delete() {
    if (selected < 0) return say('Select a person first (click a skeleton).');
    scene.people.splice(selected, 1);
    selected = Math.min(selected, scene.people.length - 1);
    commit();
  },
  mirror() { editSelected((p) => {
    const [cx] = centre(p);
    const pts = points(p).map(([x, y, c]) => [2 * cx - x, y, c]);
    for (const [r, l] of LEFT_RIGHT_PAIRS) [pts[r], pts[l]] = [pts[l], pts[r]];
    setPoints(p, pts);
    mirrorParts(p);
  }); },
  bigger() { editSelected((p) => transform(p, (x, y) => [x * SCALE_STEP, y * SCALE_STEP])); },
  smaller() { editSelected((p) => transform(p, (x, y) => [x / SCALE_STEP, y / SCALE_STEP])); },
  rotate_left() { rotateSelected(-ROTATE_STEP); },
  rotate_right() { rotateSelected(ROTATE_STEP); },
  undo() { undo(); },
  redo() { redo(); },
  clear_background() { background = null; draw(); },
};

function mirrorParts(person) {
  // After the flip: the left hand becomes the right one and the face's left and right points swap
  // (Python's mirror_parts); a person with one hand keeps one.
  const [left, right] = [person[LEFT_HAND], person[RIGHT_HAND]];
  delete person[LEFT_HAND];
  delete person[RIGHT_HAND];
  if (right !== undefined) person[LEFT_HAND] = right;
  if (left !== undefined) person[RIGHT_HAND] = left;
  const face = person[FACE];
  if (Array.isArray(face) && face.length) {
    const pts = Array.from({ length: face.length / 3 }, (_, j) => face.slice(3 * j, 3 * j + 3));
    for (const [r, l] of FACE_LEFT_RIGHT_PAIRS) [pts[r], pts[l]] = [pts[l], pts[r]];
    person[FACE] = pts.flat();
  }
}

function rotateSelected(degrees, mergeKey) {
  const a = degrees * Math.PI / 180;
  editSelected((p) => transform(p, (x, y) => [x * Math.cos(a) - y * Math.sin(a), x * Math.sin(a) + y * Math.cos(a)]), mergeKey);
}

function editSelected(fn, mergeKey) {
  if (selected < 0) return say('Select a person first (click a skeleton).');
  fn(scene.people[selected]);
  commit(mergeKey);
}

// ---- history and syncing with Python ---------------------------------------------------------
function commit(mergeKey) {
  if (!(mergeKey && mergeKey === lastMergeKey)) {
    undoStack.push(JSON.stringify(committed));
    if (undoStack.length > 200) undoStack.shift();
  }
  lastMergeKey = mergeKey || null;
  redoStack.length = 0;
  committed = clone(scene);
  props.value = clone(scene);
  say('');
  refresh();
}

function restore(text) {
  committed = JSON.parse(text);
  scene = clone(committed);
  selected = Math.min(Math.max(selected, 0), scene.people.length - 1);
  lastMergeKey = null;
  props.value = clone(committed);
  refresh();
}

function undo() {
  if (!undoStack.length) return say('Nothing to undo.');
  redoStack.push(JSON.stringify(committed));
  restore(undoStack.pop());
}

function redo() {
  if (!redoStack.length) return say('Nothing to redo.');
  undoStack.push(JSON.stringify(committed));
  restore(redoStack.pop());
}

watch('value', () => {
  const incoming = normalise(props.value, committed);
  if (JSON.stringify(incoming) === JSON.stringify(committed)) return;
  undoStack.push(JSON.stringify(committed));  // an import or preset can be undone too
  redoStack.length = 0;
  committed = incoming;
  scene = clone(incoming);
  selected = scene.people.length ? 0 : -1;
  lastMergeKey = null;
  refresh();
});

// ---- drawing ---------------------------------------------------------------------------------
function draw() {
  if (canvas.width !== scene.canvas_width || canvas.height !== scene.canvas_height) {
    canvas.width = scene.canvas_width;
    canvas.height = scene.canvas_height;
  }
  ctx.fillStyle = '#101014';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (background) {
    const s = Math.max(canvas.width / background.width, canvas.height / background.height);
    ctx.globalAlpha = 0.35;
    ctx.drawImage(background, (canvas.width - background.width * s) / 2, (canvas.height - background.height * s) / 2,
      background.width * s, background.height * s);
    ctx.globalAlpha = 1;
  }
  scene.people.forEach((p, i) => drawPerson(p, i));
}

function drawPerson(person, index) {
  const pts = bodyPoints(person);
  const color = COLORS[index % COLORS.length];
  const unit = canvas.width / DEFAULT_CANVAS;
  ctx.lineCap = 'round';
  for (const [a, b] of LIMBS) {
    if (pts[a][2] <= 0 || pts[b][2] <= 0) continue;
    ctx.strokeStyle = color;
    ctx.lineWidth = (index === selected ? 7 : 5) * unit;
    ctx.beginPath();
    ctx.moveTo(pts[a][0], pts[a][1]);
    ctx.lineTo(pts[b][0], pts[b][1]);
    ctx.stroke();
  }
  drawParts(person, color, unit);
  pts.forEach(([x, y, c]) => {
    ctx.beginPath();
    ctx.arc(x, y, 5 * unit, 0, 2 * Math.PI);
    if (c > 0) { ctx.fillStyle = '#fff'; ctx.fill(); }
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = c > 0 ? color : '#888';
    ctx.stroke();
  });
  const head = pts[0][2] > 0 ? pts[0] : pts[1];
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.arc(head[0], head[1] - 30 * unit, 12 * unit, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = '#fff';
  ctx.font = `bold ${14 * unit}px sans-serif`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(String(index + 1), head[0], head[1] - 30 * unit);
}

function drawParts(person, color, unit) {
  // Hands (bones and points) and face (points), thin, in the person's colour; hidden points left out.
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 2 * unit;
  for (const f of partsOf(person)) {
    const k = person[f];
    const at = (j) => [k[3 * j], k[3 * j + 1], k[3 * j + 2]];
    if (f !== FACE) {
      for (const [a, b] of HAND_EDGES) {
        const [p, q] = [at(a), at(b)];
        if (!(p[2] > 0 && q[2] > 0)) continue;
        ctx.beginPath();
        ctx.moveTo(p[0], p[1]);
        ctx.lineTo(q[0], q[1]);
        ctx.stroke();
      }
    }
    for (let j = 0; j < k.length / 3; j++) {
      if (!(k[3 * j + 2] > 0)) continue;
      ctx.beginPath();
      ctx.arc(k[3 * j], k[3 * j + 1], 1.5 * unit, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

// ---- prompt cards ----------------------------------------------------------------------------
function buildCards() {
  cards.innerHTML = '';
  scene.people.forEach((person, i) => {
    const color = COLORS[i % COLORS.length];
    const card = document.createElement('div');
    card.className = 'fc-card';
    card.dataset.index = i;
    card.style.borderColor = color;
    card.innerHTML = `
      <div class="fc-card-head"><span class="fc-badge">${i + 1}</span><span>Person ${i + 1}</span></div>
      <textarea class="fc-prompt" rows="2" aria-label="Person ${i + 1} prompt"
        placeholder="Who is person ${i + 1}? e.g. ${props.example_prompt}"></textarea>
      <div class="fc-words" role="note"></div>
      <div class="fc-loras"></div>
      <button type="button" class="fc-lora-add" aria-label="Add a LoRA to person ${i + 1}">+ LoRA</button>
      <details><summary>negative prompt, control strength</summary>
        <input class="fc-negative" type="text" aria-label="Person ${i + 1} negative prompt"
          placeholder="negative prompt (empty: the global one)">
        <label>control strength <input class="fc-strength" type="number" min="0"
          max="${MAX_CONTROL_STRENGTH}" step="0.1" aria-label="Person ${i + 1} control strength" placeholder="global"></label>
      </details>`;
    card.querySelector('.fc-badge').style.background = color;
    const select = () => { if (selected !== i) { selected = i; draw(); refreshStatus(); } };
    card.addEventListener('pointerdown', select);
    card.addEventListener('focusin', select);  // writing for a person (or tabbing to it) selects it
    bindField(card.querySelector('.fc-prompt'), i, 'prompt', (v) => v);
    bindField(card.querySelector('.fc-negative'), i, 'negative_prompt', (v) => (v === '' ? undefined : v));
    bindField(card.querySelector('.fc-strength'), i, 'control_strength', (v) => (v === '' ? undefined : Number(v)));
    card.querySelector('.fc-lora-add').addEventListener('click', () => {
      const person = scene.people[i];
      person.loras = [...(person.loras || []), { name: LORA_NAMES[0] || '', scale: 1 }];
      commit();
    });
    cards.appendChild(card);
  });
}

// A person's LoRAs: one row each (a name, picked from the model's LoRAs or typed, e.g. a hub id,
// and a scale); rows are rebuilt only when their number changes, so typing keeps its focus.
function buildLoraRows(card, index) {
  const loras = scene.people[index].loras || [];
  const box = card.querySelector('.fc-loras');
  box.innerHTML = '';
  loras.forEach((_, k) => {
    const row = document.createElement('div');
    row.className = 'fc-lora';
    row.innerHTML = `
      <input class="fc-lora-name" type="text" list="${listId}" aria-label="Person ${index + 1} LoRA ${k + 1}"
        placeholder="LoRA name or hub id">
      <input class="fc-lora-scale" type="number" step="0.1" aria-label="Person ${index + 1} LoRA ${k + 1} scale">
      <button type="button" class="fc-lora-remove" aria-label="Remove person ${index + 1}'s LoRA ${k + 1}">x</button>`;
    const edit = (fn) => { fn(scene.people[index].loras[k]); commit(`lora-${index}-${k}`); };
    row.querySelector('.fc-lora-name').addEventListener('input', (e) => edit((l) => { l.name = e.target.value; }));
    row.querySelector('.fc-lora-scale').addEventListener('input', (e) => edit((l) => {
      l.scale = e.target.value === '' ? 1 : Number(e.target.value);
    }));
    row.querySelector('.fc-lora-remove').addEventListener('click', () => {
      const person = scene.people[index];
      person.loras.splice(k, 1);
      if (!person.loras.length) delete person.loras;
      commit();
    });
    box.appendChild(row);
  });
}

function fillLoraRows(card, person) {
  const loras = person.loras || [];
  if (card.querySelectorAll('.fc-lora').length !== loras.length) buildLoraRows(card, Number(card.dataset.index));
  card.querySelectorAll('.fc-lora').forEach((row, k) => {
    for (const [selector, value] of [['.fc-lora-name', loras[k].name ?? ''], ['.fc-lora-scale', loras[k].scale ?? 1]]) {
      const input = row.querySelector(selector);
      if (document.activeElement !== input && input.value !== String(value)) input.value = String(value);
    }
  });
}

function bindField(input, index, key, parse) {
  input.addEventListener('input', () => {
    const value = parse(input.value);
    if (value === undefined) delete scene.people[index][key]; else scene.people[index][key] = value;
    commit(`field-${index}-${key}`);
  });
}

for (const [input, key] of [[settingInput, 'setting'], [negativeInput, 'negative_prompt']]) {
  input.addEventListener('input', () => { scene[key] = input.value; commit(`scene-${key}`); });
}

function fillCards() {
  cards.querySelectorAll('.fc-card').forEach((card) => {
    const person = scene.people[Number(card.dataset.index)];
    const fields = [['.fc-prompt', person.prompt ?? ''], ['.fc-negative', person.negative_prompt ?? ''],
      ['.fc-strength', person.control_strength ?? '']];
    for (const [selector, value] of fields) {
      const input = card.querySelector(selector);
      if (document.activeElement !== input && input.value !== String(value)) input.value = String(value);
    }
    card.querySelector('.fc-words').textContent = wordsNote(person.prompt ?? '', 'No prompt: this person gets the setting only.');
    fillLoraRows(card, person);
    card.classList.toggle('fc-selected', Number(card.dataset.index) === selected);
  });
  for (const [input, key] of [[settingInput, 'setting'], [negativeInput, 'negative_prompt']]) {
    if (document.activeElement !== input && input.value !== scene[key]) input.value = scene[key];
    element.querySelector(`.fc-words[data-field="${key}"]`).textContent = wordsNote(scene[key], '');
  }
}

function refreshStatus() {
  const n = scene.people.length;
  const parts = [`${n} ${n === 1 ? 'person' : 'people'}`, `${scene.canvas_width}x${scene.canvas_height}`];
  if (selected >= 0) parts.push(`selected: person ${selected + 1}`);
  if (!n) parts.push('add a person to start');
  status.textContent = parts.join(' | ') + (status.dataset.message ? ` - ${status.dataset.message}` : '');
}

function refreshSizes() {
  const current = `${scene.canvas_width}x${scene.canvas_height}`;
  const options = SIZES.map(([w, h, label]) => [`${w}x${h}`, label]);
  if (!options.some(([v]) => v === current)) options.push([current, `custom ${current}`]);
  sizeSelect.innerHTML = options.map(([v, label]) => `<option value="${v}">${label}</option>`).join('');
  sizeSelect.value = current;
}

function refresh() {
  if (cards.children.length !== scene.people.length) buildCards();
  fillCards();
  refreshSizes();
  refreshStatus();
  element.dataset.scene = JSON.stringify(committed);
  draw();
}

// ---- pointer interaction ---------------------------------------------------------------------
function canvasPoint(event) {
  const r = canvas.getBoundingClientRect();
  return [(event.clientX - r.left) * canvas.width / r.width, (event.clientY - r.top) * canvas.height / r.height];
}

function tolerance() { return 12 * canvas.width / canvas.getBoundingClientRect().width; }

function order() {  // the selected person first, then the top-most drawn
  const idx = scene.people.map((_, i) => i).reverse();
  return selected >= 0 ? [selected, ...idx.filter((i) => i !== selected)] : idx;
}

function hitJoint(x, y) {
  for (const i of order()) {
    const pts = points(scene.people[i]);
    for (let j = 0; j < NUM_KEYPOINTS; j++) {
      if (Math.hypot(pts[j][0] - x, pts[j][1] - y) <= tolerance()) return [i, j];
    }
  }
  return null;
}

function hitBody(x, y) {
  for (const i of order()) {
    const pts = points(scene.people[i]);
    for (const [a, b] of LIMBS) {
      if (pts[a][2] <= 0 || pts[b][2] <= 0) continue;
      if (segmentDistance(x, y, pts[a], pts[b]) <= tolerance()) return i;
    }
  }
  return -1;
}

function segmentDistance(x, y, [ax, ay], [bx, by]) {
  const dx = bx - ax;
  const dy = by - ay;
  const t = Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy || 1)));
  return Math.hypot(x - ax - t * dx, y - ay - t * dy);
}

canvas.addEventListener('pointerdown', (event) => {
  const [x, y] = canvasPoint(event);
  const joint = hitJoint(x, y);
  const body = joint ? joint[0] : hitBody(x, y);
  selected = body;
  if (body >= 0) {
    drag = { person: body, joint: joint ? joint[1] : null, start: [x, y], original: clone(scene.people[body]), moved: false };
    canvas.setPointerCapture(event.pointerId);
  }
  canvas.focus({ preventScroll: true });  // focusing must not scroll the page under the pointer
  refresh();
});

canvas.addEventListener('pointermove', (event) => {
  if (!drag) {
    const [x, y] = canvasPoint(event);
    canvas.style.cursor = hitJoint(x, y) ? 'crosshair' : hitBody(x, y) >= 0 ? 'move' : 'default';
    return;
  }
  const [x, y] = canvasPoint(event);
  const dx = x - drag.start[0];
  const dy = y - drag.start[1];
  const pts = points(drag.original);
  if (drag.joint !== null) pts[drag.joint] = [pts[drag.joint][0] + dx, pts[drag.joint][1] + dy, pts[drag.joint][2]];
  else pts.forEach((p) => { p[0] += dx; p[1] += dy; });
  setPoints(scene.people[drag.person], pts);
  drag.moved = true;
  draw();
});

function endDrag() {
  if (drag && drag.moved) commit();
  drag = null;
}
canvas.addEventListener('pointerup', endDrag);
canvas.addEventListener('pointercancel', endDrag);

canvas.addEventListener('dblclick', (event) => {
  const hit = hitJoint(...canvasPoint(event));
  if (!hit) return;
  const [i, j] = hit;
  const pts = points(scene.people[i]);
  pts[j][2] = pts[j][2] > 0 ? 0 : 1;
  setPoints(scene.people[i], pts);
  selected = i;
  commit();
});

canvas.addEventListener('wheel', (event) => {
  if (selected < 0) return;
  event.preventDefault();
  if (event.shiftKey) {
    const degrees = event.deltaY > 0 ? WHEEL_ROTATE_STEP : -WHEEL_ROTATE_STEP;
    rotateSelected(degrees, `wheel-rotate-${selected}`);
  } else {
    const f = event.deltaY > 0 ? 1 / WHEEL_SCALE_STEP : WHEEL_SCALE_STEP;
    editSelected((p) => transform(p, (x, y) => [x * f, y * f]), `wheel-scale-${selected}`);
  }
}, { passive: false });

// ---- toolbar and keyboard --------------------------------------------------------------------
element.querySelectorAll('[data-action]').forEach((button) => {
  button.addEventListener('click', () => actions[button.dataset.action]());
});

sizeSelect.addEventListener('change', () => {
  // People keep their proportions: one scale for both axes (the one that fits), centred.
  const [w, h] = sizeSelect.value.split('x').map(Number);
  const s = Math.min(w / scene.canvas_width, h / scene.canvas_height);
  const ox = (w - scene.canvas_width * s) / 2;
  const oy = (h - scene.canvas_height * s) / 2;
  scene.people.forEach((p) => setPoints(p, points(p).map(([x, y, c]) => [x * s + ox, y * s + oy, c])));
  scene.canvas_width = w;
  scene.canvas_height = h;
  commit();
  if (scene.people.length && s !== 1) say(`people scaled by ${s.toFixed(2)} and centred, proportions kept`);
});

element.querySelector('.fc-background').addEventListener('change', (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const image = new Image();
    image.onload = () => { background = image; draw(); };
    image.src = reader.result;
  };
  reader.readAsDataURL(file);
  event.target.value = '';
});

document.addEventListener('keydown', (event) => {
  if (!element.isConnected) return;
  const target = event.target;
  if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.isContentEditable)) return;
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === 'z') {
    event.preventDefault();
    if (event.shiftKey) redo(); else undo();
  } else if ((event.ctrlKey || event.metaKey) && key === 'y') {
    event.preventDefault();
    redo();
  } else if ((key === 'delete' || key === 'backspace') && target === canvas && selected >= 0) {
    event.preventDefault();
    actions.delete();
  } else if (key.startsWith('arrow') && target === canvas && selected >= 0) {
    event.preventDefault();
    const step = event.shiftKey ? NUDGE_LARGE : NUDGE;
    const [dx, dy] = { arrowleft: [-step, 0], arrowright: [step, 0], arrowup: [0, -step], arrowdown: [0, step] }[key];
    editSelected((p) => setPoints(p, points(p).map(([x, y, c]) => [x + dx, y + dy, c])), `nudge-${selected}`);
  }
});

settingInput.placeholder = `e.g. ${props.example_setting}`;
templateSelect.innerHTML = Object.keys(TEMPLATES).map((t) => `<option value="${t}">${t.replace('_', ' ')}</option>`).join('');
refresh();
