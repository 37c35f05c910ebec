// Browser checks of the OHIF front, one headless Debian chromium for the whole run.
// Usage: node viewer-driver.mjs '<json>'  with {baseUrl, user, password, studyUID, outDir, stages}
// Prints one JSON object (results per check) on stdout; screenshots go to outDir.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const cfg = JSON.parse(process.argv[2]);
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const results = { timings: {}, console: [] };
fs.mkdirSync(cfg.outDir, { recursive: true });
const t0 = Date.now();
const lap = (name, since) => { results.timings[name] = (Date.now() - since) / 1000; };

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: FLAGS, headless: true });
try {
  // 1. without login: the front refuses (page, app config, DICOMweb)
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const statuses = {};
    for (const p of ['/', '/app-config.js', '/dicom-web/studies', '/viewer?StudyInstanceUIDs=' + cfg.studyUID]) {
      // chromium cancels the basic-auth challenge (no credentials): navigation fails, nothing shown
      let nav;
      try { nav = String((await page.goto(cfg.baseUrl + p)).status()); } catch (e) { nav = /ERR_INVALID_AUTH_CREDENTIALS/.test(String(e)) ? 'auth-required' : String(e).slice(0, 200); }
      const r = await ctx.request.get(cfg.baseUrl + p);
      statuses[p] = { navigation: nav, status: r.status(), challenge: r.headers()['www-authenticate'] || null };
    }
    results.noLogin = statuses;
    await ctx.close();
  }

  const ctx = await browser.newContext({
    httpCredentials: { username: cfg.user, password: cfg.password },
    viewport: { width: 1600, height: 900 },
  });
  const page = await ctx.newPage();
  page.on('console', m => { if (m.type() === 'error' && results.console.length < 30) results.console.push(m.text()); });
  const qido = [];
  page.on('request', r => { if (r.url().includes('/dicom-web/studies?') || r.url().includes('/series?')) qido.push(r.url()); });

  // 2. study list: the study, its description, and (expanded) its original and DL series
  {
    const t = Date.now();
    await page.goto(cfg.baseUrl + '/');
    await page.getByText(cfg.studyDescription, { exact: false }).first().waitFor({ timeout: 60000 });
    lap('studyList', t);
    await page.screenshot({ path: path.join(cfg.outDir, 'study-list.png') });
    results.studyListText = await page.evaluate(() => document.body.innerText);
    await page.getByText(cfg.studyDescription, { exact: false }).first().click();
    try {
      await page.getByText(cfg.expectSeries[0], { exact: true }).first().waitFor({ timeout: 30000 });
    } catch (e) { /* reported through the text */ }
    await page.waitForTimeout(500);
    results.studyListExpandedText = await page.evaluate(() => document.body.innerText);
    await page.screenshot({ path: path.join(cfg.outDir, 'study-list-expanded.png') });
    results.qido = qido.slice(0, 5);
    // the "Launch workflow" buttons of the selected study (OHIF 3.13: one per mode, title = its name)
    results.modeButtons = await page.evaluate(() => {
      const head = [...document.querySelectorAll('span')].find(x => x.innerText.trim() === 'Launch workflow');
      const panel = head && head.parentElement && head.parentElement.parentElement;
      return panel ? [...panel.querySelectorAll('button[title]')].map(b => ({ text: b.title, disabled: Boolean(b.disabled) })) : [];
    });
  }

  // 3. viewer with our hanging protocol: the first stage by one click on the study list's
  // "Cervical DL" button (the row is still expanded), the others by URL, one page load each
  results.stages = {};
  for (const stage of cfg.stages) {
    const t = Date.now();
    if (stage === cfg.stages[0]) {
      await page.locator('button[title="Cervical DL"]').first().click({ timeout: 30000 });
      await page.waitForURL(/\/cervical-dl\?/, { timeout: 30000 });
      results.launchUrl = page.url().slice(cfg.baseUrl.length);
    } else {
      await page.goto(`${cfg.baseUrl}/cervical-dl?StudyInstanceUIDs=${cfg.studyUID}&stageId=${stage}`);
    }
    const info = await page.waitForFunction(() => { try { // services may not be ready yet
      const s = window.services;
      if (!s) return false;
      const hp = s.hangingProtocolService.getActiveProtocol?.() || {};
      const vps = [...s.viewportGridService.getState().viewports.values()];
      const out = { protocol: hp.protocol?.id, stage: hp.stage?.id ?? hp.stageIndex, viewports: {} };
      for (const vp of vps) {
        const uid = vp.displaySetInstanceUIDs?.[0];
        const ds = uid && s.displaySetService.getDisplaySetByUID(uid);
        const entry = { description: ds?.SeriesDescription, number: ds?.SeriesNumber, modality: ds?.Modality };
        const csvp = s.cornerstoneViewportService.getCornerstoneViewport(vp.viewportId);
        if (ds?.Modality === 'MR' && !(csvp && csvp.getCurrentImageIdIndex)) return false;
        if (csvp && csvp.getCurrentImageIdIndex) {
          entry.index = csvp.getCurrentImageIdIndex();
          entry.nImages = csvp.getImageIds().length;
          // non-blank: pixel spread of the rendered canvas
          const c = csvp.getCanvas?.();
          if (!c || !c.width) return false;
          const g = document.createElement('canvas');
          g.width = c.width; g.height = c.height;
          const ctx2 = g.getContext('2d');
          ctx2.drawImage(c, 0, 0);
          const d = ctx2.getImageData(0, 0, c.width, c.height).data;
          let n = 0, sum = 0, sum2 = 0;
          for (let i = 0; i < d.length; i += 16) { const v = d[i]; n++; sum += v; sum2 += v * v; }
          entry.mean = sum / n; entry.std = Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2));
          entry.voi = csvp.getProperties?.().voiRange;
          if (!(entry.std > 1)) return false;
        }
        if (ds?.Modality === 'DOC') {
          const obj = document.querySelector(`[data-viewport-id="${vp.viewportId}"] object[type="application/pdf"]`);
          entry.pdfElement = Boolean(obj);
          entry.pdfUrl = obj?.getAttribute('data') || null;
          if (!entry.pdfUrl) return false;
        }
        out.viewports[vp.viewportId] = entry;
      }
      return Object.keys(out.viewports).length >= 2 && out.viewports['cervical-orig'] && out.viewports['cervical-dl'] ? out : false;
    } catch (e) { return false; } }, null, { timeout: 90000, polling: 500 });
    const state = await info.jsonValue();
    // where each viewport of the pair is now: a flagged series moves to its worst slice once both
    // are mounted (wait for that, 5 s at most), a clean one stays at the middle
    const where = () => {
      const s = window.services, r = {};
      for (const id of ['cervical-orig', 'cervical-dl']) {
        const v = s.cornerstoneViewportService.getCornerstoneViewport(id);
        const uid = s.viewportGridService.getState().viewports.get(id)?.displaySetInstanceUIDs?.[0];
        const images = s.displaySetService.getDisplaySetByUID(uid)?.images || [];
        const index = v.getCurrentImageIdIndex(), imageId = v.getImageIds()[index];
        const image = images.find(i => i.imageId === imageId) || images[index] || {};
        r[id] = { index, sop: image.SOPInstanceUID, comments: image.ImageComments || null,
                  source: [].concat(image.SourceImageSequence || [])[0]?.ReferencedSOPInstanceUID || null,
                  worstIndex: images.findIndex(i => /Worst slice\./.test(String(i.ImageComments || ''))) };
      }
      return r;
    };
    state.current = await page.waitForFunction(where => {
      const r = eval(`(${where})`)();
      const dl = r['cervical-dl'];
      return dl.worstIndex < 0 || dl.index === dl.worstIndex ? r : false;
    }, where.toString(), { timeout: 5000, polling: 100 }).then(h => h.jsonValue()).catch(() => page.evaluate(where));
    // the ORIGINAL / DL ENHANCED label of each viewport (app-config.js overlay), text and colour
    state.overlays = await page.waitForFunction(comments => {
      const r = {};
      // overlays are drawn beside the viewport element: match them to a viewport by position
      const labels = [...document.querySelectorAll('.overlay-item')].filter(x => /^(ORIGINAL|DL ENHANCED)/.test(x.innerText.trim()));
      for (const id of ['cervical-orig', 'cervical-dl']) {
        const el = document.querySelector(`[data-viewportid="${id}"]`);
        if (!el) return false;
        const b = el.getBoundingClientRect();
        const hit = labels.find(x => {
          const c = x.getBoundingClientRect();
          return c.left >= b.left - 2 && c.right <= b.right + 2 && c.top >= b.top - 2 && c.bottom <= b.bottom + 2;
        });
        if (!hit) return false;
        // every line of the top-right corner (ours: label, model, QC verdict), top to bottom; clipped = cut by CSS
        const corner = [...document.querySelectorAll('.overlay-item')].filter(x => {
          const c = x.getBoundingClientRect();
          return c.left >= b.left + b.width / 2 && c.right <= b.right + 2 && c.top >= b.top - 2 && c.bottom <= b.top + b.height / 3;
        }).sort((x, y) => x.getBoundingClientRect().top - y.getBoundingClientRect().top);
        r[id] = { text: hit.innerText.trim(), color: getComputedStyle(hit).color,
                  lines: corner.map(x => ({ text: x.innerText.trim(), color: getComputedStyle(x).color,
                                            clipped: x.scrollWidth > x.clientWidth + 1 })) };
      }
      // wait for the verdict too, as the DL image now shown states it (the overlay follows a jump a moment later)
      const qcLines = r['cervical-dl'].lines.map(l => l.text).filter(t => !/^(DL ENHANCED|cervical_dl)/.test(t));
      if (!qcLines.length || (comments && qcLines.join(' ') !== comments)) return false;
      return r;
    }, state.current['cervical-dl'].comments, { timeout: 15000, polling: 250 }).then(h => h.jsonValue()).catch(() => null);
    lap(`viewer-${stage}`, t);
    const qc = state.viewports['cervical-qc'];
    if (qc && qc.pdfUrl) {  // the very document the viewer loaded (blob URL), for the test to read
      qc.pdfBase64 = await page.evaluate(async u => {
        const b = new Uint8Array(await (await fetch(u)).arrayBuffer());
        let s = ''; for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
        return btoa(s);
      }, qc.pdfUrl);
    }
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(cfg.outDir, `viewer-${stage}.png`) });

    // 4. scroll the original (mouse wheel over it): the DL viewport follows, and VOI is shared
    const box = await page.locator('[data-viewportid="cervical-orig"]').boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    const towards = state.current['cervical-orig'].index < state.viewports['cervical-orig'].nImages / 2 ? 120 : -120;
    await page.mouse.wheel(0, towards);
    await page.waitForTimeout(800);
    await page.mouse.wheel(0, towards);
    await page.waitForTimeout(1200);
    state.afterScroll = await page.evaluate(() => {
      const s = window.services, r = {};
      for (const id of ['cervical-orig', 'cervical-dl']) {
        const v = s.cornerstoneViewportService.getCornerstoneViewport(id);
        r[id] = { index: v.getCurrentImageIdIndex(), voi: v.getProperties().voiRange };
      }
      return r;
    });
    // window/level changed on the original (as the W/L tool does, through the viewport API): DL follows
    state.afterVoi = await page.evaluate(async () => {
      const s = window.services;
      const o = s.cornerstoneViewportService.getCornerstoneViewport('cervical-orig');
      o.setProperties({ voiRange: { lower: 200, upper: 900 } });
      o.render();
      await new Promise(r => setTimeout(r, 800));
      const d = s.cornerstoneViewportService.getCornerstoneViewport('cervical-dl');
      return { orig: o.getProperties().voiRange, dl: d.getProperties().voiRange };
    });
    state.before = Object.fromEntries(Object.entries(state.current).map(([k, v]) => [k, v.index]));
    await page.screenshot({ path: path.join(cfg.outDir, `viewer-${stage}-scrolled.png`) });
    results.stages[stage] = state;
    if (stage === cfg.stages[0]) {  // OHIF's "." key: the next stage of the protocol, without a reload
      await page.keyboard.press('.');
      results.nextStageKey = await page.waitForFunction(first => {
        const a = window.services.hangingProtocolService.getActiveProtocol?.() || {};
        const id = a.stage?.id ?? a.stageIndex;
        return id !== undefined && id !== first ? { protocol: a.protocol?.id, stage: id } : false;
      }, stage, { timeout: 10000, polling: 250 }).then(h => h.jsonValue()).catch(() => null);
    }
  }

  // 5. the QC measurements' ROIs, drawn by OHIF's SR viewport (stage "roi"): what is on the image
  // shown (annotations of cornerstone's state and the text the SVG layer drew) and on every image
  if (cfg.roiStage) {
    const t = Date.now();
    await page.goto(`${cfg.baseUrl}/cervical-dl?StudyInstanceUIDs=${cfg.studyUID}&stageId=${cfg.roiStage}`);
    results.roi = await page.waitForFunction(() => { try {
      const s = window.services, tools = window.cornerstoneTools;
      if (!s || !tools) return false;
      const hp = s.hangingProtocolService.getActiveProtocol?.() || {};
      const vp = s.viewportGridService.getState().viewports.get('cervical-sr');
      const sr = vp && s.displaySetService.getDisplaySetByUID(vp.displaySetInstanceUIDs?.[0]);
      const csvp = s.cornerstoneViewportService.getCornerstoneViewport('cervical-sr');
      const imageId = csvp?.getCurrentImageId?.();
      if (!sr || !imageId) return false;
      let shown = null;
      for (const ds of s.displaySetService.getActiveDisplaySets()) {  // the image's own series, not the SR's key images
        const image = ds.Modality === 'SR' || ds.SOPClassHandlerId?.includes('dicom-sr') ? null
          : (ds.images || []).find(i => i.imageId === imageId);
        if (image && !shown) shown = { seriesNumber: ds.SeriesNumber, description: ds.SeriesDescription, sop: image.SOPInstanceUID };
      }
      const sopOf = id => { for (const ds of s.displaySetService.getActiveDisplaySets()) {
        const image = (ds.images || []).find(i => i.imageId === id); if (image) return image.SOPInstanceUID; } return null; };
      const all = tools.annotation.state.getAllAnnotations().filter(a => a.metadata?.toolName === 'DICOMSRDisplay');
      const el = document.querySelector('[data-viewportid="cervical-sr"]');
      const drawnText = el ? [...el.querySelectorAll('svg text tspan')].map(x => x.textContent.trim()).filter(Boolean) : [];
      const here = all.filter(a => a.metadata.referencedImageId === imageId);
      if (!shown || !here.length || !drawnText.length) return false;
      const c = csvp.getCanvas(), g = document.createElement('canvas');
      g.width = c.width; g.height = c.height;
      const ctx2 = g.getContext('2d'); ctx2.drawImage(c, 0, 0);
      const d = ctx2.getImageData(0, 0, c.width, c.height).data;
      let n = 0, sum = 0, sum2 = 0;
      for (let i = 0; i < d.length; i += 16) { n++; sum += d[i]; sum2 += d[i] * d[i]; }
      return { protocol: hp.protocol?.id, stage: hp.stage?.id ?? hp.stageIndex, srDescription: sr.SeriesDescription,
               srModality: sr.Modality, shown, std: Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2)),
               drawnText, paths: el.querySelectorAll('svg path, svg polyline').length,
               annotations: all.map(a => ({ uid: a.annotationUID, sop: sopOf(a.metadata.referencedImageId), here: a.metadata.referencedImageId === imageId,
                                            points: (a.data?.handles?.points || []).length,
                                            labels: (a.data?.labels || []).map(l => ({ label: l.label, value: l.value })) })) };
    } catch (e) { return false; } }, null, { timeout: 90000, polling: 500 }).then(h => h.jsonValue())
      .catch(e => ({ error: String(e).slice(0, 300) }));
    lap('viewer-roi', t);
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(cfg.outDir, 'viewer-roi.png') });
  }

  // 6. a double click on the study row opens the first workflow that fits the study: ours
  {
    await page.goto(cfg.baseUrl + '/');
    const row = page.getByText(cfg.studyDescription, { exact: false }).first();
    await row.waitFor({ timeout: 60000 });
    await row.dblclick();
    results.doubleClickUrl = await page.waitForURL(/\/cervical-dl\?/, { timeout: 30000 })
      .then(() => page.url().slice(cfg.baseUrl.length)).catch(() => page.url().slice(cfg.baseUrl.length));
  }
} catch (e) {
  results.error = String(e && e.stack || e);
  try { const pages = browser.contexts().flatMap(c => c.pages()); if (pages.length) await pages[pages.length - 1].screenshot({ path: path.join(cfg.outDir, 'error.png') }); } catch (_) { /* */ }
} finally {
  results.timings.total = (Date.now() - t0) / 1000;
  await browser.close();
}
process.stdout.write(JSON.stringify(results));
