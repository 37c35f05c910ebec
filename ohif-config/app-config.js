/* OHIF 3.13 configuration for Cervical DL Enhance (served at /app-config.js by the nginx front).
 *
 * - One data source: Orthanc's DICOMweb through the same origin (/dicom-web, proxied by nginx,
 *   which adds Orthanc's credentials server-side and splits the comma-separated includefield).
 * - First-visit tour and investigational-use dialog off.
 * - Mode "Cervical DL" (route /cervical-dl, first button of every MR study in the study list):
 *   OHIF's basic viewer (its layout, tools and panels) with the hanging protocol "cervicalDL".
 *   The protocol can also be asked for in any mode: /viewer?...&hangingprotocolId=cervicalDL.
 * - Hanging protocol "cervicalDL" (stage with &stageId=ce|t2|t1|ax|roi; OHIF's "." and "," keys step
 *   through the stages): original | DL-enhanced of the same role side by side, VOI and slice
 *   synchronised, opened at the middle slice, or at the slice the quality check scored worst
 *   when it flagged the series. Stage 1 is the CE T1 pair with the QC report (PDF) in a third
 *   viewport: the post-contrast sagittal T1 is the series the motion check is for.
 *   Other stages: SAG_T2 (Dixon water / in-phase / plain T2), SAG_T1, AX_T2, and "roi": the QC
 *   measurements' ROIs (C3-C4 disc, C3 marrow, background air) with their values, in OHIF's SR viewport.
 * Everything is registered from this file (no OHIF rebuild): the mode is a plain object in
 * `modes` (OHIF loads objects as they are), built on the bundled @ohif/mode-basic.
 */
// "QC: MOTION FLAGGED. Images 1-3 of 13. Read the original." -> one line per sentence
const qcSentences = text => String(text || '').split(/(?<=\.)\s+/).filter(Boolean);
// The writer ends the verdict of the flagged series' worst DL image with this sentence.
const WORST_SLICE_SENTENCE = 'Worst slice.';
// The series' verdict (the same on every image of the series), without the per-image sentence
const verdictSentences = text => qcSentences(text).filter(x => x !== WORST_SLICE_SENTENCE);

/** OHIF's SR loader, for each measurement group of a report (customization onBeforeSRAddMeasurement).
 * It reads coords[0] of every group, and our QC report's series-level groups (SNR, CNR, motion
 * score of a whole series) have no geometry: an empty one makes OHIF skip them instead of stopping
 * the whole load. A planar ROI gets one label line, its region and values ("C3-C4 disc: mean
 * 1352.51, SNR 46.75"): one line each keeps the boxes of the adjacent disc and marrow apart. Changed
 * in place (OHIF keeps this object), once. */
const SR_VALUE_NAMES = { 'Signal to noise': 'SNR', 'Contrast to noise ratio': 'CNR', 'Standard Deviation': 'noise SD', Mean: 'mean' };
function cervicalSRMeasurement({ measurement: m }) {
  if (!m || m.cervicalTidied) return m;
  m.cervicalTidied = true;
  if (!Array.isArray(m.coords) || !m.coords.length) {
    m.coords = [{}];
    return m;
  }
  const labels = m.labels || [];
  const site = labels.find(l => l.label === '363698007');  // SCT Finding site
  // our tracking identifier is "<role> <original|DL> <region>" ("SAG_CE_T1 original C3 marrow")
  const ours = /^[A-Z0-9_]+ (original|DL) (.+)$/.exec(String(m.TrackingIdentifier || ''));
  const values = labels.filter(l => l !== site)
    .map(l => `${SR_VALUE_NAMES[l.label] || l.label} ${String(l.value).replace(/ 1$/, '')}`);
  m.labels = [{ label: ours ? ours[2] : site?.value || 'ROI', value: values.join(', ') }];
  return m;
}

/** The study list's launch entry: OHIF's basic viewer opened with the cervicalDL protocol. */
const cervicalDLMode = {
  id: 'cervical-dl',
  async modeFactory({ modeConfiguration, loadModules }) {
    const [basic] = await loadModules(['@ohif/mode-basic']);
    const base = await basic.modeFactory.call(basic, { modeConfiguration });
    return {
      ...base,
      id: 'cervical-dl',
      routeName: 'cervical-dl',
      displayName: 'Cervical DL',  // the study list's buttons show about 14 characters
      hide: false,
      hangingProtocol: 'cervicalDL',
      isValidMode({ modalities }) {
        const valid = String(modalities || '').split('\\').includes('MR');
        return { valid, description: valid ? 'MR study' : 'Cervical DL reads MR studies only' };
      },
      onModeEnter(context) {
        registerCervicalDL(context.servicesManager.services);
        return base.onModeEnter.call(this, context);
      },
    };
  },
};

window.config = {
  name: 'cervical-dl',
  routerBasename: '/',
  extensions: [],
  modes: [cervicalDLMode],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  customizationService: [
    { 'ohif.tours': { $set: [] } },
    // the QC report's ROIs drawn by OHIF's SR viewport (stage "roi")
    { onBeforeSRAddMeasurement: { $set: cervicalSRMeasurement } },
    // Top right of every viewport: ORIGINAL (cyan) or DL ENHANCED + model + strength (amber), from the
    // image's own header (DerivationDescription names our software), not from the description.
    {
      'viewportOverlay.topRight': {
        $set: [
          {
            id: 'cervicalOriginal', inheritsFrom: 'ohif.overlayItem', title: 'Original acquisition', color: '#38d9ff',
            condition: ({ referenceInstance: i }) =>
              Boolean(i) && i.Modality === 'MR' && !/CervicalDLEnhance/.test(String(i.DerivationDescription || '')),
            contentF: () => 'ORIGINAL',
          },
          // DL: what it is and its strength first (the overlay cuts long lines), the model under it
          {
            id: 'cervicalDL', inheritsFrom: 'ohif.overlayItem', title: 'DL-enhanced derived series', color: '#ffb020',
            condition: ({ referenceInstance: i }) => /CervicalDLEnhance/.test(String(i?.DerivationDescription || '')),
            contentF: ({ referenceInstance: i }) => {
              const strength = (/strength (\w+)/.exec(String(i.DerivationDescription)) || [])[1];
              return `DL ENHANCED${strength ? `, ${strength}` : ''}`;
            },
          },
          {
            id: 'cervicalDLModel', inheritsFrom: 'ohif.overlayItem', title: 'DL model', color: '#ffb020',
            condition: ({ referenceInstance: i }) => /CervicalDLEnhance.*model \S+ \S+/.test(String(i?.DerivationDescription || '')),
            contentF: ({ referenceInstance: i }) => /model (\S+ \S+)/.exec(String(i.DerivationDescription))[1],
          },
          // Under them, on the DL viewport of every stage: the quality check's verdict for this series
          // (the writer puts it in ImageComments), one sentence per line: red when flagged, amber when
          // motion could not be judged (no air beside the body), else green.
          ...[0, 1, 2].map(k => ({
            id: `cervicalQC${k}`, inheritsFrom: 'ohif.overlayItem', title: 'Quality check of this series',
            color: k === 0 ? undefined : '#ff5c5c',
            condition: ({ referenceInstance: i }) => /^QC: /.test(String(i?.ImageComments || '')) &&
              verdictSentences(i.ImageComments).length > k,
            contentF: ({ referenceInstance: i }) => verdictSentences(i.ImageComments)[k],
          })).map(item => (item.color ? item : [
            { ...item, id: `${item.id}Flag`, color: '#ff5c5c',
              condition: a => item.condition(a) && /(FLAGGED|ACCENTUATED)/.test(String(a.referenceInstance.ImageComments)) },
            { ...item, id: `${item.id}NotMeasurable`, color: '#ffb020',
              condition: a => item.condition(a) && !/(FLAGGED|ACCENTUATED)/.test(String(a.referenceInstance.ImageComments)) &&
                /NOT MEASURABLE/.test(String(a.referenceInstance.ImageComments)) },
            { ...item, id: `${item.id}Clear`, color: '#5cd65c',
              condition: a => item.condition(a) && !/(FLAGGED|ACCENTUATED|NOT MEASURABLE)/.test(String(a.referenceInstance.ImageComments)) },
          ])).flat(),
          // and on the image the QC scored worst in a flagged series (the one shown, not the series')
          {
            id: 'cervicalQCWorst', inheritsFrom: 'ohif.overlayItem', title: 'Worst slice of the quality check', color: '#ff5c5c',
            condition: ({ instance: i }) => qcSentences(i?.ImageComments).includes(WORST_SLICE_SENTENCE),
            contentF: () => WORST_SLICE_SENTENCE,
          },
        ],
      },
    },
  ],
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (same origin)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        // no singlepart: the PDF comes from the BulkDataURI (orthanc-dicomweb 1.7 has no /rendered for PDF)
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};

const registeredServices = new WeakSet();
/** Adds the cervicalDL protocol and its custom attributes to OHIF's services, once; true when done. */
function registerCervicalDL(services) {
  if (!services || !services.hangingProtocolService) return false;
  if (registeredServices.has(services)) return true;
  const CE_RE = /(\+\s*c\b|\bpost\b|_post|\bgd\b|_gd\b|gado|\bkm\b|contrast|\bce\b|\+gd|\bc\+)/i;
  const DIXON_RE = /(dixon|ideal|flex)/i;
  const LOCALIZER_RE = /(survey|locali[sz]er|\bloc\b|scout|3[- ]?pl|tri[- ]?pilot|\bpilot\b|calibration|refscan)/i;
  const IR_RE = /(stir|tirm|\bir\b|flair)/i;

  const list = v => (v === undefined || v === null ? [] : Array.isArray(v) ? v : String(v).split('\\'));
  const first = ds => (ds && ds.instances && ds.instances[0]) || ds?.instance || {};
  const isDL = ds => {
    const i = first(ds);
    // "DL ..." (what the writer writes now) or "... DL" (results written earlier, still in a PACS)
    return /(^DL | DL$)/.test(String(ds?.SeriesDescription || i.SeriesDescription || '')) &&
      list(i.ImageType).map(s => String(s).toUpperCase())[0] === 'DERIVED';
  };

  function plane(iop) {
    const v = list(iop).map(Number);
    if (v.length !== 6 || v.some(isNaN)) return null;
    const n = [v[1] * v[5] - v[2] * v[4], v[2] * v[3] - v[0] * v[5], v[0] * v[4] - v[1] * v[3]].map(Math.abs);
    const k = n.indexOf(Math.max(...n));
    return ['sagittal', 'coronal', 'axial'][k];
  }

  /** Role of an original series (a port of series/roles.py, enough for display). */
  function roleOfOriginal(ds) {
    const i = first(ds);
    if (String(i.Modality || ds.Modality || '').toUpperCase() !== 'MR') return null;
    const imageType = list(i.ImageType).map(s => String(s).toUpperCase());
    const description = `${i.SeriesDescription || ''} ${i.ProtocolName || ''}`;
    if (imageType[0] === 'DERIVED' || imageType.includes('LOCALIZER') || LOCALIZER_RE.test(description)) return null;
    if (IR_RE.test(description) || ![undefined, null, '', 0].includes(i.InversionTime)) return null;
    const p = plane(i.ImageOrientationPatient);
    if (!p || p === 'coronal') return null;
    const tr = Number(i.RepetitionTime), te = Number(i.EchoTime);
    let w = null;
    if (tr < 1000 && te < 30) w = 'T1';
    else if (tr >= 1500 && te >= 60) w = 'T2';
    else if (/t1/i.test(description)) w = 'T1';
    else if (/t2/i.test(description)) w = 'T2';
    const contrast = Boolean(String(i.ContrastBolusAgent || '').trim()) || CE_RE.test(description);
    const dixon = DIXON_RE.test(description) || imageType.some(v => ['DIXON', 'IP', 'W', 'IN_PHASE', 'WATER', 'M_IP'].includes(v));
    if (p === 'axial') return w === 'T2' && !contrast && !dixon ? 'AX_T2' : null;
    if (w === 'T1') return dixon ? null : contrast ? 'SAG_CE_T1' : 'SAG_T1';
    if (w === 'T2' && !contrast) {
      if (!dixon) return 'SAG_T2';
      if (imageType.some(v => ['IP', 'IN_PHASE', 'M_IP'].includes(v))) return 'SAG_DIXON_IP';
      if (imageType.some(v => ['W', 'WATER', 'M_W'].includes(v))) return 'SAG_DIXON_W';
    }
    return null;
  }

  /** Role of any display set; a DL series takes the role of its source (SeriesNumber - 50). */
  function cervicalRole(ds) {
    if (!isDL(ds)) return roleOfOriginal(ds) || 'NONE';
    const number = Number(ds.SeriesNumber ?? first(ds).SeriesNumber) - 50;
    const source = (services?.displaySetService?.getActiveDisplaySets() || []).find(
      o => o.StudyInstanceUID === ds.StudyInstanceUID && Number(o.SeriesNumber) === number && !isDL(o)
    );
    return (source && roleOfOriginal(source)) || 'NONE';
  }

  const sync = [
    { type: 'voi', id: 'cervicalVOI', source: true, target: true, options: { syncColormap: false } },
    { type: 'imageSlice', id: 'cervicalSlice', source: true, target: true },
  ];
  const selector = (roles, kind) => ({
    seriesMatchingRules: [
      { attribute: 'cervicalRole', constraint: { includes: roles }, required: true },
      { attribute: 'cervicalKind', constraint: { equals: { value: kind } }, required: true },
      // preference among Dixon images: water, then in-phase, then plain T2
      { attribute: 'cervicalRole', constraint: { equals: { value: roles[0] } }, weight: 3 },
      { attribute: 'cervicalRole', constraint: { equals: { value: roles[1] || roles[0] } }, weight: 2 },
    ],
  });
  const pairViewport = (key, side) => ({
    // open at the middle slice (the midline of a sagittal stack), not at the far-lateral first one;
    // a flagged series then moves to its worst slice (openAtWorstSlice)
    viewportOptions: {
      viewportId: `cervical-${side}`, toolGroupId: 'default', allowUnmatchedView: true, syncGroups: sync,
      initialImageOptions: { preset: 'middle' },
    },
    displaySets: [{ id: `${key}-${side}` }],
  });
  const roleGroups = {
    ce: ['SAG_CE_T1'],
    t2: ['SAG_DIXON_W', 'SAG_DIXON_IP', 'SAG_T2'],
    t1: ['SAG_T1'],
    ax: ['AX_T2'],
  };
  const displaySetSelectors = {
    qcReport: {
      seriesMatchingRules: [
        { attribute: 'Modality', constraint: { equals: { value: 'DOC' } }, required: true },
        { attribute: 'SeriesDescription', constraint: { contains: 'QC report' }, weight: 2 },
        // the worker writes one report per processed series; each names its role and any
        // flag ("DL QC report SAG_CE_T1 MOTION FLAGGED"): prefer a flagged one, then CE T1
        { attribute: 'SeriesDescription', constraint: { containsI: 'flag' }, weight: 5 },
        { attribute: 'SeriesDescription', constraint: { containsI: 'CE_T1' }, weight: 4 },
        { attribute: 'DocumentTitle', constraint: { containsI: 'CE_T1' }, weight: 4 },
      ],
    },
  };
  // the QC measurements (TID 1500 SR): its planar ROIs, drawn on the images they were placed on
  displaySetSelectors.qcMeasurements = {
    seriesMatchingRules: [
      { attribute: 'Modality', constraint: { equals: { value: 'SR' } }, required: true },
      { attribute: 'SeriesDescription', constraint: { contains: 'QC measurements' }, required: true },
    ],
  };
  for (const [key, roles] of Object.entries(roleGroups)) {
    displaySetSelectors[`${key}-orig`] = selector(roles, 'ORIG');
    displaySetSelectors[`${key}-dl`] = selector(roles, 'DL');
  }
  const stage = (key, name, withReport) => ({
    id: key,
    name,
    stageActivation: { enabled: { minViewportsMatched: 2 } },
    viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: withReport ? 3 : 2 } },
    viewports: [
      pairViewport(key, 'orig'),
      pairViewport(key, 'dl'),
      ...(withReport
        ? [{ viewportOptions: { viewportId: 'cervical-qc', allowUnmatchedView: true }, displaySets: [{ id: 'qcReport' }] }]
        : []),
    ],
  });

  const protocol = {
    id: 'cervicalDL',
    name: 'Cervical DL: original | DL',
    description: 'Original and DL-enhanced series of the same role side by side, synchronised; QC report with the CE T1 pair',
    protocolMatchingRules: [
      { attribute: 'ModalitiesInStudy', constraint: { contains: 'MR' }, weight: 1 },
    ],
    toolGroupIds: ['default'],
    numberOfPriorsReferenced: -1,
    imageLoadStrategy: 'interleaveTopToBottom',
    displaySetSelectors,
    defaultViewport: { viewportOptions: { viewportType: 'stack', toolGroupId: 'default', allowUnmatchedView: true }, displaySets: [{ id: 'ce-orig', matchedDisplaySetsIndex: -1 }] },
    stages: [
      stage('ce', 'CE T1 + QC report', true),
      stage('t2', 'Sag T2'),
      stage('t1', 'Sag T1'),
      stage('ax', 'Ax T2'),
      // OHIF's SR viewport opens at the report's first measurement (the writer puts the CE T1
      // original's C3-C4 disc first) and shows every ROI of that image with its values; its
      // arrows step to the next measurement, the DL image's ROIs among them.
      {
        id: 'roi',
        name: 'QC ROIs',
        stageActivation: { enabled: { minViewportsMatched: 1 } },
        viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: 1 } },
        viewports: [{ viewportOptions: { viewportId: 'cervical-sr', allowUnmatchedView: true }, displaySets: [{ id: 'qcMeasurements' }] }],
      },
    ],
  };

  const hp = services.hangingProtocolService;
  hp.addCustomAttribute('cervicalRole', 'Cervical DL role', ds => cervicalRole(ds));
  hp.addCustomAttribute('cervicalKind', 'Original or DL', ds => (isDL(ds) ? 'DL' : 'ORIG'));
  hp.addProtocol(protocol.id, protocol);
  // A pair opens at the middle slice (initialImageOptions). When the quality check flagged the
  // series, its worst DL image says so ("Worst slice."): both viewports of the pair go there
  // once both are mounted (the original by the DL image's SourceImageSequence).
  const cvs = services.cornerstoneViewportService;
  let pending = null;
  cvs.subscribe(cvs.EVENTS.VIEWPORT_DATA_CHANGED, ({ viewportId }) => {
    if (viewportId !== 'cervical-orig' && viewportId !== 'cervical-dl') return;
    clearTimeout(pending);
    pending = setTimeout(() => openAtWorstSlice(services), 150);
  });
  registeredServices.add(services);
  return true;
}

/** Moves the pair to the flagged series' worst slice; true when it did. */
function openAtWorstSlice(services) {
  const { viewportGridService, displaySetService, cornerstoneViewportService: cvs } = services;
  const viewports = viewportGridService.getState().viewports;
  const displaySetOf = id => {
    const uid = viewports.get(id)?.displaySetInstanceUIDs?.[0];
    return uid ? displaySetService.getDisplaySetByUID(uid) : null;
  };
  const dl = displaySetOf('cervical-dl'), orig = displaySetOf('cervical-orig');
  const worst = (dl?.images || []).find(i => qcSentences(i.ImageComments).includes(WORST_SLICE_SENTENCE));
  if (!worst) return false;
  const source = [].concat(worst.SourceImageSequence || [])[0]?.ReferencedSOPInstanceUID;
  const moves = [['cervical-dl', dl, worst.SOPInstanceUID], ['cervical-orig', orig, source]];
  for (const [id, ds, sopUID] of moves) {
    const viewport = cvs.getCornerstoneViewport(id);
    const image = (ds?.images || []).find(i => i.SOPInstanceUID === sopUID);
    if (!viewport?.getImageIds || !image) continue;
    const ids = viewport.getImageIds();
    let index = ids.indexOf(image.imageId);
    if (index < 0 && ids.length === ds.images.length) index = ds.images.indexOf(image);
    if (index >= 0 && index !== viewport.getCurrentImageIdIndex()) viewport.setImageIdIndex(index);
  }
  return true;
}

// The protocol in other modes too (/viewer?...&hangingprotocolId=cervicalDL): OHIF publishes its
// services as window.services; the protocol must be there before the route reads the URL.
const registerTimer = setInterval(() => { if (registerCervicalDL(window.services)) clearInterval(registerTimer); }, 5);
setTimeout(() => clearInterval(registerTimer), 120000);
